"""Training memory, measured: the peak of real training steps, activations included, beside the account.

`ftlib.params.training_memory` *accounts* weights + gradients + AdamW's two moments. A real step also
holds the activations saved for the backward pass (they grow with batch x sequence length and do not
shrink when weights are frozen: the backward pass still runs through every layer above the lowest
trained tensor), temporary buffers, and the allocator's slack.
- CUDA: torch.cuda.max_memory_allocated over the steps, minus what was allocated before the model.
- CPU: a child process imports everything, notes its resident set size (RSS), resets the kernel's peak
  mark (Linux: /proc/self/clear_refs), builds the model, trains the steps, and reports its peak RSS
  (VmHWM; elsewhere resource.getrusage) minus the RSS before the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

STEPS = 10  # enough for gradual unfreezing's even schedule to thaw every block before the last steps


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ModuleNotFoundError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> bool:
    """Linux: set the peak-RSS mark (VmHWM) to the current RSS, so transients of imports do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM on Linux (reset by _reset_peak_rss); elsewhere getrusage's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _train_steps(strategy: str, steps: int, profile: str | None, model_name: str | None, device, lr: float | None):
    """Build the model, apply `strategy` and run `steps` optimizer steps of fit on real reviews: the model."""
    from .data import load_movie_reviews
    from .models import build_classifier
    from .profiles import get_profile
    from .strategies import get_recipe
    from .study import train_model

    prof = get_profile(profile, device)
    train = load_movie_reviews()["train"]
    train = train.subset(range(steps * prof.batch_size))
    model, tokenizer = build_classifier(model_name, num_labels=train.num_labels)
    model.to(device)
    train_model(strategy, model, train, None, tokenizer, prof, seed=0, lr=lr or get_recipe(strategy).lr,
                epochs=1, device=device)
    return model, prof


def _preload(model_name: str | None) -> None:
    """Import every module training will use (transformers imports model code lazily) and read the data."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    from . import data, models, study, train  # noqa: F401

    source = models.embedded_model_path() if model_name is None else model_name
    MODEL_MAPPING[type(AutoConfig.from_pretrained(source))]  # imports the model's module
    data.load_movie_reviews()


def measure_here(strategy: str, steps: int = STEPS, profile: str | None = None, model_name: str | None = None,
                 device: str | None = None, lr: float | None = None) -> dict:
    """Peak training memory in this process: CUDA's allocator peak, or the process's peak RSS on a CPU."""
    from .device import get_device
    from .params import training_memory

    dev = get_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        model, prof = _train_steps(strategy, steps, profile, model_name, dev, lr)
        torch.cuda.synchronize(dev)
        peak, how = torch.cuda.max_memory_allocated(dev) - before, "torch.cuda.max_memory_allocated"
    else:
        _preload(model_name)
        before = _rss_bytes()  # libraries, tokenizer and data loaded: what remains is the model and training
        exact = _reset_peak_rss()
        model, prof = _train_steps(strategy, steps, profile, model_name, dev, lr)
        peak = _peak_rss_bytes() - before
        how = "peak RSS of a child process (VmHWM after reset)" if exact else \
            "peak RSS of a child process (getrusage: lifetime peak, imports included)"
    return {"strategy": strategy, "measured_bytes": int(peak), "accounted_bytes": training_memory(model).total,
            "steps": steps, "batch_size": prof.batch_size, "max_length": prof.max_length, "profile": prof.name,
            "device": str(dev), "how": how}


def measure_training_memory(strategy: str, steps: int = STEPS, profile: str | None = None,
                            model_name: str | None = None, device: str | None = None, lr: float | None = None,
                            timeout: float = 900) -> dict:
    """Measured peak (activations included) and accounted training memory of `strategy`, in bytes.

    On a CPU it runs in a fresh child process, so nothing else this process holds counts."""
    from .device import get_device
    from .strategies import get_recipe

    get_recipe(strategy)  # a typo fails here, not in the child
    if get_device(device).type == "cuda":
        return measure_here(strategy, steps, profile, model_name, device, lr)
    args = [sys.executable, "-m", "ftlib.memory", strategy, "--steps", str(steps), "--device", "cpu"]
    for flag, value in (("--profile", profile), ("--model", model_name), ("--lr", lr)):
        if value is not None:
            args += [flag, str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {strategy} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ftlib.memory", description=measure_here.__doc__)
    p.add_argument("strategy")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--profile", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--lr", type=float, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(measure_here(a.strategy, a.steps, a.profile, a.model, a.device, a.lr)))


if __name__ == "__main__":
    main()
