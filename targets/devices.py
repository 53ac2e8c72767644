"""Device profiles by name: the table's (`targets.device_table`) and the measured host's
(`targets.host`), looked up case-insensitively with their aliases, listed and formatted.

The classes a profile is made of (`DeviceProfile`, `ComputeUnit`, `PowerMode`, `Sourced`) and
the meaning of their source tags are in `targets.profile`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from compiler.errors import UnknownTargetError
from targets.device_table import TABLE as _TABLE
from targets.profile import GIB, DeviceProfile

__all__ = [
    "PROFILE_NAMES",
    "format_table",
    "get_profile",
    "list_profiles",
    "unverified_sources",
]

PROFILE_NAMES: tuple[str, ...] = ("host",) + tuple(p.name for p in _TABLE)
HOST_ALIASES = ("host", "local", "localhost")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


_LOOKUP: dict[str, DeviceProfile] = {}
for _p in _TABLE:
    for _n in (_p.name, *_p.aliases):
        if _key(_n) in _LOOKUP or _key(_n) in HOST_ALIASES:
            raise ValueError(f"duplicate device name or alias {_n!r}")
        _LOOKUP[_key(_n)] = _p


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """The profile for a device name or alias (case-insensitive); "host" detects this machine.

    Raises `UnknownTargetError` naming close matches and every known target."""
    if isinstance(name, DeviceProfile):
        return name
    key = _key(str(name))
    if key in HOST_ALIASES:
        from targets.host import detect_host

        return detect_host()
    if key in _LOOKUP:
        return _LOOKUP[key]
    close = difflib.get_close_matches(key, [*_LOOKUP, *HOST_ALIASES], n=3, cutoff=0.5)
    msg = f"unknown target {name!r}"
    if close:
        msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    raise UnknownTargetError(f"{msg}; known targets: {', '.join(PROFILE_NAMES)} "
                             "(`edgec targets` lists them)")


def list_profiles(include_host: bool = True) -> list[DeviceProfile]:
    """Every profile in table order, the (measured, cached) host first."""
    profiles = list(_TABLE)
    if include_host:
        from targets.host import detect_host

        profiles.insert(0, detect_host())
    return profiles


def unverified_sources(profile: DeviceProfile) -> list[tuple[str, str]]:
    """(path, source) of every number (and power-mode scale) in `profile` that rests on an
    unverified input."""
    found = [(path, s.source) for path, s in profile.sourced_values()
             if "unverified" in s.source]
    return found + [(f"power.{m.name}.ops_scale", m.note) for m in profile.power_modes
                    if "unverified" in m.note]


def _fmt(ops: float) -> str:
    return f"{ops / 1e12:.3g}" if ops else "-"


def _fmt_bytes(n: float) -> str:
    return f"{n / GIB:.3g} GiB" if n >= GIB else f"{n / 2**20:.3g} MiB"


def format_table(profiles: Iterable[DeviceProfile]) -> str:
    """A plain-text table for `edgec targets`: peaks are the main unit's, in T(FL)OPS."""
    head = ("name", "units", "fp32", "fp16", "int8", "GB/s", "memory", "W", "backends")
    rows = [head]
    for p in profiles:
        units = "+".join(u.name + (f"x{u.count}" if u.count > 1 else "") for u in p.compute_units)
        rows.append((
            p.name, units, *(_fmt(p.peak(prec)) for prec in ("fp32", "fp16", "int8")),
            f"{p.bandwidth() / 1e9:.3g}", _fmt_bytes(p.memory_capacity.value),
            f"{p.power().watts.value:g}", ",".join(p.backends)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n\npeaks: dense T(FL)OPS of the first unit at the default power " \
                              "mode; `edgec targets --json` lists every unit and source.\n"
