"""Properties over generated input: method option strings, configs, and the parameter budget of every plan."""

import json
import math
from dataclasses import fields

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefold.exporter import CompressionConfig
from edgefold.exporter.methods import (
    METHODS,
    NO_COMPRESSION,
    AutoencoderOptions,
    FitContext,
    get_method,
    parse_method_options,
)
from edgefold.exporter.methods.frequency import exact_row_cost, fit_frequency_aware
from edgefold.exporter.planning.ranks import plan_rank
from edgefold.exporter.source.architectures import ALL_KINDS, TARGET_GROUPS
from edgefold.runtime import EdgefoldError

FAST = settings(deadline=None, max_examples=60)
OPTION_NAMES = sorted({f.name for cls in METHODS.values() if cls.options_type for f in fields(cls.options_type)})
VALUES = st.one_of(
    st.sampled_from(["0", "1", "-1", "2.5", "1e-3", "nan", "inf", "-inf", "1e400", "true", "no", "maybe", "linear",
                     "elu", " 3 ", "1_0", "", "9" * 5000]),
    st.integers(-3, 10 ** 6).map(str), st.floats().map(repr), st.text(max_size=6))


@FAST
@given(method=st.sampled_from([*METHODS, NO_COMPRESSION, "pca"]),
       options=st.dictionaries(st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=5)), VALUES, max_size=4))
def test_option_strings_give_checked_options_or_one_line(method, options):
    try:
        parsed = parse_method_options(method, options)
    except EdgefoldError as error:
        assert "\n" not in str(error)
        return
    if parsed is None:
        assert not options
        return
    assert type(parsed) is METHODS[method].options_type
    for f in fields(parsed):
        value = getattr(parsed, f.name)
        assert type(value) is type(f.default) and (not isinstance(value, float) or math.isfinite(value))
    assert parse_method_options(method, parsed.changed()) == parsed  # what the manifest records reads back
    assert get_method(method, parsed).options is parsed
    assert CompressionConfig(method=method, targets="attention", options=parsed).method_options == parsed.changed()


@FAST
@given(method=st.sampled_from([*METHODS, NO_COMPRESSION]),
       options=st.sampled_from([None, *{cls.options_type for cls in METHODS.values() if cls.options_type}]))
def test_a_config_takes_only_its_methods_options(method, options):
    expected = None if method == NO_COMPRESSION else METHODS[method].options_type
    instance = None if options is None else options()
    targets = ",".join(getattr(METHODS.get(method), "block_kinds", ["attention"]))  # a structured method's own
    if options is None or options is expected:
        assert CompressionConfig(method=method, targets=targets, options=instance).options is instance
    else:
        try:
            CompressionConfig(method=method, targets=targets, options=instance)
        except EdgefoldError as error:
            assert options.__name__ in str(error)
        else:
            raise AssertionError(f"{method} took {options.__name__}")


def _valid_targets(targets) -> bool:
    if isinstance(targets, str):
        return all(w.strip() in TARGET_GROUPS or w.strip() in ALL_KINDS for w in targets.split(","))
    return bool(targets) and targets <= set(ALL_KINDS)


NUMBERS = st.one_of(st.sampled_from([math.inf, -math.inf, math.nan, 1, 1.0, 1.5, 2, 32]), st.floats(),
                    st.integers(-5, 2 ** 64), st.booleans(), st.none(), st.text(max_size=3))


def _integer(value, low, high) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _accepted(**fields) -> CompressionConfig | None:
    """The config, or None where it was refused in one line."""
    try:
        return CompressionConfig(**fields)
    except EdgefoldError as error:
        assert "\n" not in str(error)
        return None


@FAST
@given(ratio=NUMBERS)
def test_a_config_accepts_exactly_finite_ratios_above_1(ratio):
    valid = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and ratio > 1
    config = _accepted(ratio=ratio)
    assert (config is not None) == valid
    if config:
        json.dumps(config.ratio, allow_nan=False)  # the manifest's value


@FAST
@given(rank_multiple=NUMBERS, seed=NUMBERS, size_budget=NUMBERS,
       targets=st.one_of(st.text(alphabet="abefgimnot-,dqkv ", max_size=20),
                         st.frozensets(st.sampled_from([*ALL_KINDS, "mlp"]), max_size=3)))
def test_a_config_accepts_exactly_valid_fields(rank_multiple, seed, size_budget, targets):
    valid = {"rank_multiple": _integer(rank_multiple, 1, math.inf), "seed": _integer(seed, 0, 2 ** 63),
             "size_budget": size_budget is None or _integer(size_budget, 1, math.inf),
             "targets": _valid_targets(targets)}
    values = {"rank_multiple": rank_multiple, "seed": seed, "size_budget": size_budget, "targets": targets}
    for name, value in values.items():  # one field at a time, the others at their defaults
        assert (_accepted(**{name: value}) is not None) == valid[name], name
    config = _accepted(**values)
    assert (config is not None) == all(valid.values())
    if config:
        assert isinstance(config.targets, frozenset)
        json.dumps([config.seed, config.rank_multiple, config.size_budget], allow_nan=False)


@FAST
@given(rows=st.integers(1, 5000), cols=st.integers(1, 5000), ratio=st.floats(1.0, 1000, exclude_min=True),
       extra=st.integers(0, 20000), multiple=st.sampled_from([1, 8, 32]))
def test_plan_rank_never_overspends_and_always_saves(rows, cols, ratio, extra, multiple):
    rank = plan_rank(rows, cols, ratio, extra, multiple)
    budget = rows * cols / ratio
    smallest = multiple * (rows + cols) + extra
    if rank is None:
        assert smallest > budget or smallest >= rows * cols
        return
    stored = rank * (rows + cols) + extra
    assert rank % multiple == 0 and rank >= multiple
    assert stored <= budget and stored < rows * cols
    assert stored + multiple * (rows + cols) > budget  # the largest that fits


@settings(deadline=None, max_examples=25)
@given(rows=st.integers(24, 300), cols=st.integers(4, 40), ratio=st.floats(1.05, 80), seen=st.floats(0, 1),
       method=st.sampled_from(["svd", "ae", "ae-norms"]), multiple=st.sampled_from([1, 8]), seed=st.integers(0, 9))
def test_every_frequency_trial_stays_within_the_budget(rows, cols, ratio, seen, method, multiple, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    counts = torch.randint(1, 50, (rows,), generator=generator).double() * (torch.rand(rows, generator=generator)
                                                                             < seen)
    fitter = {"svd": get_method("svd"), "ae": get_method("ae", AutoencoderOptions(epochs=0)),
              "ae-norms": get_method("ae", AutoencoderOptions(epochs=0, preserve_norms=True))}[method]
    context = FitContext(score=lambda f: -float((f.dense() - weight).norm()))
    factors = fit_frequency_aware(weight, ratio, fitter, counts, context, multiple)
    budget = rows * cols / ratio
    if factors is None:
        assert "frequency" not in context.details
        return
    assert factors.num_params <= budget
    for trial in context.details["frequency"]["trials"]:
        stored = (exact_row_cost(rows, cols, trial["exact_rows"]) + trial["rank"] * (rows + cols)
                  + fitter.extra_params(rows, cols, "embeddings"))
        assert stored <= budget and trial["rank"] % multiple == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=300), st.sampled_from(["mean", "p01", "min"]))
def test_a_bootstrap_bound_lies_within_the_items_and_the_same_seed_repeats_it(values, statistic):
    import numpy as np

    from edgefold.runtime.metrics import RESAMPLES, STATISTICS, bootstrap

    samples = np.array(values)
    resampled = bootstrap(samples, statistic)
    assert resampled.shape == (RESAMPLES,) and np.array_equal(resampled, bootstrap(samples, statistic))
    assert samples.min() - 1e-12 <= resampled.min() and resampled.max() <= samples.max() + 1e-12
    point = float(STATISTICS[statistic](samples[None])[0])
    if statistic == "min":  # a resample's minimum is never below the sample's
        assert resampled.min() >= point - 1e-12
    if statistic == "mean" and np.ptp(samples) > 0:  # the point estimate sits inside the resampled spread
        assert np.quantile(resampled, 0.001) <= point + 1e-12 <= np.quantile(resampled, 0.999) + 2e-12
