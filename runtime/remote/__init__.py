"""Bench and validate on devices over SSH: send the packed bundle, run edgefold there, bring the JSON back.

- :mod:`.devices`: what ``--on [NAME=]ssh://[USER@]HOST[:PORT]`` names, checked before any work;
- :mod:`.ssh`: OpenSSH's own client with the user's configuration, keys and known_hosts, in batch mode, host
  keys always checked; what its failures mean, in one line;
- :mod:`.agent`: the standard-library script that runs on the device (probe, receive, run, remove);
- :mod:`.jobs`: one job on many devices in parallel, each device's failure its own.
"""

from .devices import Device, parse_device
from .jobs import DeviceOutcome, RemoteJob, run_on_devices
from .ssh import SshSettings

__all__ = ["Device", "DeviceOutcome", "RemoteJob", "SshSettings", "parse_device", "run_on_devices"]
