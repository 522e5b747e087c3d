"""Run fingerprints: which config values (and inputs) the outputs of a stage were made with.

Every stage of a run (``train``, ``infer``, ``evaluate``, ``refine``, ``report``) records
``<run>/fingerprints/<stage>.json`` beside its outputs. A fingerprint holds

- ``keys``: the dotted config keys the stage depends on with their values, *cumulative*
  (``infer`` holds the ``train`` keys too), so that a changed key can be named whichever
  stage notices it;
- ``inputs``: what is not in the config but changes the outputs (extra training inputs'
  fingerprints, the initial weights' SHA-256, dependency runs' fingerprints, the split list
  inferred, ...), name -> JSON value;
- ``previous``: the recorded hash of the stage before it (``null`` when it has none on disk);
- ``wsss_version``: :data:`wsss.__version__`;
- ``hash``: SHA-256 (hex) of the four above in canonical JSON (sorted keys; integers written
  as floats so that ``lr: 1`` and ``lr: 1.0`` agree).

Which keys a stage depends on (:func:`stage_keys`):

====================  ========================================================================
train                 ``method.*``, ``data.*`` except ``eval_split`` / ``num_workers`` /
                      ``check_files``, ``model.*``, ``optim.*``, ``trainer.*`` except how it
                      runs (``accelerator``, ``devices``, ``strategy``, ``num_nodes``, logging
                      switches), ``seed``
infer                 train + ``inference.*`` except ``channels_last`` / ``batch_views``
                      (identical outputs)
evaluate              infer + ``evaluation.*`` + ``data.eval_split``
refine                evaluate + ``refine.*`` except ``workers``
affinity              refine + ``affinity.*`` (affinity labels, boundary network)
rw                    affinity + ``random_walk.*`` except ``random_walk.crf``
rw_crf                rw + ``random_walk.crf`` (the dense CRF after the walk; its own stage so
                      that changing it re-runs only the CRF, not the walk)
segment               rw_crf + ``segmentation.*``
report                everything else (``report.*`` and any other section)
====================  ========================================================================

**Keys added later.** A config key that did not exist when a run was made is absent from its
recorded fingerprints. :data:`LEGACY_DEFAULTS` lists each key added since fingerprints exist with
the value that reproduces the behaviour from before it existed; a recorded fingerprint without
such a key still matches when the config holds exactly that value (:func:`changed_keys`,
:func:`matches`). **Keys moved later.** :data:`MOVED_KEYS` lists keys that an earlier wsss keyed in
an earlier stage than now (``random_walk.crf``: in ``rw`` before the ``rw_crf`` stage existed); a
recorded fingerprint that still holds such a key, absent from the current one, is not changed by it. A key whose addition changed behaviour (a bug fix such as
``method.noc_bn_mode``) is deliberately not listed, so runs made before it do not match.

**Moved runs.** A fingerprint file also records ``run_dir``, the absolute run directory it was
written in (not hashed). An absolute path value that differs from the recorded one still matches
when both lie at the same place relative to their runs (``<old run>/requires/seed`` against
``<new run>/requires/seed``), so a run copied or moved with its dependencies is reused; a path
that moved relative to its run (another dependency) still differs. Records written before
``run_dir`` existed compare paths as they are.

``output_dir``, ``source``, ``overwrite``, ``overrides`` and ``requires`` are never keyed
(a dependency enters through its run's fingerprint in ``inputs``). ``data.root`` is keyed as
an absolute path.

The decision logic (reuse / resume / overwrite / stop) lives in :mod:`wsss.stages`; this
module only computes, stores and compares fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import wsss
from wsss.io import read_json, write_json

__all__ = [
    "STAGES",
    "Fingerprint",
    "stage_keys",
    "stage_fingerprint",
    "fingerprint_path",
    "read_fingerprint",
    "write_fingerprint",
    "remove_fingerprint",
    "changed_keys",
    "matches",
    "LEGACY_DEFAULTS",
    "MOVED_KEYS",
    "key_family",
    "describe_change",
    "file_digest",
]

#: the stages of a run, in order; each one's keys include all earlier stages' keys
STAGES: tuple[str, ...] = ("train", "infer", "evaluate", "refine", "affinity", "rw", "rw_crf", "segment", "report")

#: config keys that never enter a fingerprint: where/how a run executes, not what it computes
EXCLUDED: frozenset[str] = frozenset({
    "output_dir", "source", "overwrite", "overrides", "requires",
    "data.eval_split",  # keyed by evaluate, not train (see _STAGE_OF)
    "data.num_workers", "data.check_files",
    "trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.num_nodes",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_checkpointing", "trainer.default_root_dir",
    "inference.channels_last", "inference.batch_views", "model.channels_last",
    "refine.workers",
})

_TRAIN_SECTIONS = {"method", "data", "model", "optim", "trainer", "seed"}
_STAGE_OF_SECTION = {"inference": "infer", "evaluation": "evaluate", "refine": "refine", "affinity": "affinity",
                     "random_walk": "rw", "segmentation": "segment"}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def _under(key: str, prefix: str) -> bool:
    """``key`` is ``prefix`` itself or a key below it (a mapping flattened: ``prefix.x``)."""
    return key == prefix or key.startswith(prefix + ".")


def key_family(prefix: str, keys: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of flattened ``keys`` at ``prefix`` or below it (``random_walk.crf`` and
    ``random_walk.crf.iterations`` for ``prefix="random_walk.crf"``)."""
    return {k: v for k, v in keys.items() if _under(k, prefix)}


def _stage_of(key: str) -> str | None:
    if key == "data.eval_split":
        return "evaluate"
    if _under(key, "random_walk.crf"):
        return "rw_crf"
    if key in EXCLUDED or any(_under(key, e) for e in EXCLUDED if "." not in e):
        return None
    top = key.split(".", 1)[0]
    if top in _TRAIN_SECTIONS:
        return "train"
    return _STAGE_OF_SECTION.get(top, "report")


def stage_keys(cfg: Any, stage: str) -> dict[str, Any]:
    """The config values stage ``stage`` depends on, cumulative over the earlier stages.

    Args:
        cfg: a :class:`wsss.config.Config` (anything with ``to_dict()``).
        stage: one of :data:`STAGES`.

    Returns:
        ``{dotted key: value}`` (JSON-compatible values, nested mappings flattened, lists kept).

    Raises:
        ValueError: unknown stage.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    upto = STAGES.index(stage)
    flat = _flatten(cfg.to_dict())
    out = {}
    for key, value in flat.items():
        s = _stage_of(key)
        if s is not None and STAGES.index(s) <= upto:
            out[key] = value
    if "data.root" in out and out["data.root"] is not None:
        out["data.root"] = str(Path(str(out["data.root"])).resolve())
    return dict(sorted(out.items()))


def _canon(v: Any) -> Any:
    """JSON-canonical form used for hashing and comparison (ints as floats, tuples as lists)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        f = float(v)
        return repr(f) if (math.isnan(f) or math.isinf(f)) else f
    if isinstance(v, Mapping):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return str(v)


@dataclass
class Fingerprint:
    """What the outputs of one stage depend on (see the module docstring).

    Attributes:
        stage: the stage whose key set is used (one of :data:`STAGES`).
        name: file name / display name (``stage`` unless a variant, e.g. ``evaluate_val``).
        keys: cumulative config keys -> values.
        inputs: non-config inputs -> JSON values.
        previous: hash (64 hex chars) of the preceding stage's recorded fingerprint, or None.
        version: the wsss version.
        run_dir: absolute run directory the outputs live in (recorded, never hashed: see "Moved
            runs" in the module docstring), or None.
    """

    stage: str
    keys: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    previous: str | None = None
    version: str = wsss.__version__
    name: str = ""
    run_dir: str | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.stage

    @property
    def hash(self) -> str:
        """SHA-256 hex digest of version, keys, inputs and previous (canonical JSON)."""
        blob = json.dumps(
            {"wsss_version": self.version, "keys": _canon(self.keys), "inputs": _canon(self.inputs), "previous": self.previous},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self, status: str = "done") -> dict[str, Any]:
        """The JSON stored in ``fingerprints/<name>.json`` (``status``: started | done)."""
        out = {"stage": self.stage, "name": self.name, "status": status, "hash": self.hash,
               "wsss_version": self.version, "previous": self.previous, "keys": self.keys, "inputs": self.inputs}
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        return out


def stage_fingerprint(cfg: Any, stage: str, *, inputs: Mapping[str, Any] | None = None,
                      previous: str | None = None, name: str | None = None) -> Fingerprint:
    """The fingerprint of stage ``stage`` for ``cfg`` (see :func:`stage_keys`).

    Raises:
        ValueError: unknown stage.
    """
    out_dir = getattr(cfg, "output_dir", None)
    return Fingerprint(stage=stage, keys=stage_keys(cfg, stage), inputs=dict(inputs or {}), previous=previous,
                       name=name or stage, run_dir=os.path.abspath(str(out_dir)) if out_dir else None)


def fingerprint_path(run_dir: str | Path, name: str, started: bool = False) -> Path:
    """``<run_dir>/fingerprints/<name>.json`` (``<name>.started.json`` for a stage in progress)."""
    return Path(run_dir) / "fingerprints" / (f"{name}.started.json" if started else f"{name}.json")


def read_fingerprint(run_dir: str | Path, name: str, started: bool = False) -> dict[str, Any] | None:
    """The recorded fingerprint dict, or None when there is none.

    Raises:
        ValueError: ``<file>: not a valid fingerprint file`` (unreadable JSON or no ``hash``).
    """
    path = fingerprint_path(run_dir, name, started)
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid fingerprint file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("hash"), str):
        raise ValueError(f"{path}: not a valid fingerprint file (no 'hash')")
    return data


def write_fingerprint(run_dir: str | Path, fp: Fingerprint, status: str = "done") -> Path:
    """Write ``fp`` atomically (``status="started"`` -> ``<name>.started.json``); returns the path.
    Writing ``done`` removes the ``started`` file."""
    path = fingerprint_path(run_dir, fp.name, started=status == "started")
    write_json(path, fp.to_dict(status))
    if status != "started":
        fingerprint_path(run_dir, fp.name, started=True).unlink(missing_ok=True)
    return path


def remove_fingerprint(run_dir: str | Path, name: str) -> None:
    """Delete both the final and the started fingerprint of ``name`` (absent files are fine)."""
    for started in (False, True):
        fingerprint_path(run_dir, name, started).unlink(missing_ok=True)


_UNSET = object()

#: keys added to the config after runs with fingerprints existed -> the value that gives the
#: behaviour of a run made before the key existed (see the module docstring). Add a key here
#: only when its default reproduces the old outputs exactly.
LEGACY_DEFAULTS: dict[str, Any] = {
    "affinity.label_source": "confident",  # 72a75e2: IRN's confident labels were the only source
    "affinity.label_band": 0,  # 72a75e2: only read with label_source pseudo
    "random_walk.crf": None,  # c3c50ec: no CRF after the walk was the only behaviour
}

#: keys (or key prefixes) keyed by a later stage than when runs with fingerprints were first made ->
#: the stage that keys them now; a recorded fingerprint of an earlier stage may still hold them
MOVED_KEYS: dict[str, str] = {
    "random_walk.crf": "rw_crf",  # keyed by rw until the rw_crf stage existed
}


def _moved(key: str, current_keys: Mapping[str, Any]) -> bool:
    """``key`` belongs to a moved family that the current stage does not key at all."""
    return any(_under(key, k) and not key_family(k, current_keys) for k in MOVED_KEYS)


def _same_place(a: Any, b: Any, a_run: str | None, b_run: str | None) -> bool:
    """Two absolute path strings at the same place relative to their run directories."""
    if not (a_run and b_run and isinstance(a, str) and isinstance(b, str) and os.path.isabs(a) and os.path.isabs(b)):
        return False
    return os.path.relpath(a, a_run) == os.path.relpath(b, b_run)


def changed_keys(recorded: Mapping[str, Any], current: Fingerprint, *, include_inputs: bool = True) -> list[tuple[str, Any, Any]]:
    """``[(key, recorded value, current value)]`` that differ (``_UNSET`` marks an absent key).

    Absolute paths at the same place relative to ``recorded["run_dir"]`` and ``current.run_dir``
    do not differ (a moved run, see the module docstring). Order: ``wsss_version``, then config
    keys, then inputs (``inputs.`` prefix dropped).
    """
    rec_run = recorded.get("run_dir")
    out: list[tuple[str, Any, Any]] = []
    if recorded.get("wsss_version") != current.version:
        out.append(("wsss_version", recorded.get("wsss_version", _UNSET), current.version))
    pairs = [(recorded.get("keys") or {}, current.keys)]
    if include_inputs:
        pairs.append((recorded.get("inputs") or {}, current.inputs))
    for old, new in pairs:
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key, _UNSET), new.get(key, _UNSET)
            if a is _UNSET and old is recorded.get("keys") and key in LEGACY_DEFAULTS \
                    and b is not _UNSET and _canon(b) == _canon(LEGACY_DEFAULTS[key]) \
                    and not key_family(key, old):
                continue  # added after the run was made, at the value it implicitly had
            if b is _UNSET and old is recorded.get("keys") and _moved(key, new):
                continue  # keyed by a later stage now (MOVED_KEYS), checked there
            if (a is _UNSET) != (b is _UNSET) or _canon(a) != _canon(b):
                if _same_place(a, b, rec_run, current.run_dir):
                    continue  # the run was moved or copied with it
                out.append((key, a, b))
    return out


def matches(recorded: Mapping[str, Any] | None, current: Fingerprint) -> bool:
    """Whether outputs with the ``recorded`` fingerprint are what ``current`` would compute: the
    same hash, or no changed key / input / version (:func:`changed_keys`, which accepts the keys
    of :data:`LEGACY_DEFAULTS` at their legacy value) and the same ``previous``."""
    if recorded is None:
        return False
    if recorded.get("hash") == current.hash:
        return True
    return not changed_keys(recorded, current) and recorded.get("previous") == current.previous


def _fmt(v: Any) -> str:
    if v is _UNSET:
        return "<unset>"
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True)


def describe_change(recorded: Mapping[str, Any], current: Fingerprint, *, include_inputs: bool = True,
                    max_keys: int = 4) -> str:
    """Why ``recorded`` differs from ``current``, as a sentence fragment.

    One key: ``were made with optim.lr=0.1, the config says 0.01``; several: ``were made with
    optim.lr=0.1 and seed=0, the config says optim.lr=0.01 and seed=1``; only the previous
    stage differs: ``were made from earlier outputs of stage 'train' that have been recomputed
    since``.
    """
    diff = changed_keys(recorded, current, include_inputs=include_inputs)
    if not diff:
        if recorded.get("previous") != current.previous:
            return "were made from outputs of an earlier stage that have been recomputed (or removed) since"
        return "were made with the same values (hash differs)"
    if len(diff) == 1:
        k, a, b = diff[0]
        return f"were made with {k}={_fmt(a)}, the config says {_fmt(b)}"
    shown, more = diff[:max_keys], len(diff) - max_keys
    tail = f" (and {more} more key(s))" if more > 0 else ""
    made = " and ".join(f"{k}={_fmt(a)}" for k, a, _ in shown)
    says = " and ".join(f"{k}={_fmt(b)}" for k, _, b in shown)
    return f"were made with {made}, the config says {says}{tail}"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes.

    Raises:
        FileNotFoundError: ``<path>: file not found``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
