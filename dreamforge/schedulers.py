"""The schedulers (samplers) a job may ask for, by the names users know, and what each one means:
a Diffusers scheduler class with its options, and the names A1111 writes in its ``parameters``
text. Torch-free: the request model, the fake runner and the docs read this table; only
``build`` (called inside the SDXL runner) imports Diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

SchedulerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde_karras", "ddim",
                        "unipc"]
NAMES: tuple[str, ...] = get_args(SchedulerName)


@dataclass(frozen=True)
class SchedulerSpec:
    cls: str
    options: dict[str, Any] = field(default_factory=dict)
    # As A1111 (1.9+) writes them: "Sampler: DPM++ 2M, Schedule type: Karras".
    sampler: str = ""
    schedule_type: str | None = None


SPECS: dict[str, SchedulerSpec] = {
    "euler": SchedulerSpec("EulerDiscreteScheduler", {"use_karras_sigmas": False}, "Euler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": SchedulerSpec("DPMSolverMultistepScheduler",
                              {"algorithm_type": "dpmsolver++", "solver_order": 2,
                               "use_karras_sigmas": False}, "DPM++ 2M"),
    "dpmpp_2m_karras": SchedulerSpec("DPMSolverMultistepScheduler",
                                     {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                      "use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    # Needs torchsde (in the diffusers extra). Its Brownian noise is seeded per item (see build).
    "dpmpp_sde_karras": SchedulerSpec("DPMSolverSDEScheduler", {"use_karras_sigmas": True},
                                      "DPM++ SDE", "Karras"),
    "ddim": SchedulerSpec("DDIMScheduler", {}, "DDIM"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", {}, "UniPC"),
}
assert set(SPECS) == set(NAMES)


def name_of(cls: str, config: dict[str, Any]) -> str | None:
    """Our name for a scheduler a checkpoint came with (its own default), if it is one of ours."""
    for name, spec in SPECS.items():
        if spec.cls == cls and all(config.get(k) == v for k, v in spec.options.items()):
            return name
    return None


def a1111_fields(name: str | None) -> list[tuple[str, str]]:
    """The ``Sampler:`` (and ``Schedule type:``) fields of A1111's parameters text."""
    spec = SPECS.get(name or "")
    if spec is None:
        return []
    fields = [("Sampler", spec.sampler)]
    if spec.schedule_type:
        fields.append(("Schedule type", spec.schedule_type))
    return fields


def build(name: str | None, base_config: Any, seeds: list[int]) -> Any:
    """A fresh scheduler: ``name``'s class built ``from_config`` the checkpoint's own scheduler
    config (so its betas and timestep spacing carry over), or that scheduler itself for None.
    A fresh one per pipeline call, so no state (step index, noise sampler) leaks between jobs."""
    import diffusers

    if name is None:
        cls = getattr(diffusers, base_config["_class_name"])
        return cls.from_config(base_config)
    spec = SPECS[name]
    options = dict(spec.options)
    if spec.cls == "DPMSolverSDEScheduler":
        try:
            import torchsde  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            from dreamforge.errors import RunnerError

            raise RunnerError("the dpmpp_sde_karras scheduler needs torchsde (pip install "
                              "'dreamforge[diffusers]')", code="scheduler_unavailable") from None
        # One Brownian tree per item, seeded with the item's seed: without it the noise is drawn
        # at random and no job could be made again.
        options["noise_sampler_seed"] = list(seeds)
    return getattr(diffusers, spec.cls).from_config(base_config, **options)


def describe(scheduler: Any, name: str | None) -> dict[str, Any]:
    """What the record says of the scheduler a job ran with: our name, the class, its settings."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config.pop("noise_sampler_seed", None)  # the item seeds, recorded beside
    cls = type(scheduler).__name__
    return {"name": name if name is not None else name_of(cls, config), "class": cls,
            "config": _plain(config)}


def _plain(value: Any) -> Any:
    """JSON-able (configs hold tuples and, now and then, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
