"""What each integration's monitor costs per optimizer step, on one small model.

    python benchmarks/integrations_overhead.py [--rounds 5] [--steps 60] [--json OUT]

One MLP regression (64 -> 256 -> 256 -> 1, batch 64, Adam, CPU) is trained in a plain
loop (`TrainingHealth`), by a Lightning ``Trainer`` (`integrations.lightning`) and by a
Hugging Face ``Trainer`` (`integrations.huggingface`), each with and without the monitor.
As in ``benchmarks/overhead.py`` the variants are interleaved round by round (the order of
"off" and "on" alternating), so machine noise hits them alike; a step is timed from the
framework's first per-step hook to its last, so the monitor's hooks are inside the
measurement, and the first ``WARMUP`` steps of every fit, and a first round of fits,
are left out. Reported per
integration: median step time off and on, and their ratio. ``--clock cpu`` times the
process's CPU time instead of the wall clock, for a machine other processes load. A
framework that is not installed is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch import nn

import healthcheck

WARMUP, BATCH = 5, 64
clock = time.perf_counter  # --clock cpu: time.process_time, this process's CPU time


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))


def data(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(steps * BATCH, 64, generator=g)
    return X, X[:, :8].sum(1, keepdim=True)


def plain(steps: int, monitored: bool) -> list[float]:
    torch.manual_seed(0)
    net, (X, Y) = model(), data(steps)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    with tempfile.TemporaryDirectory() as run_dir:
        health = healthcheck.TrainingHealth(net, opt, run_dir, console=False) if monitored else None
        for i in range(steps):
            t0 = clock()
            x, y = X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]
            opt.zero_grad()
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            if health is not None:
                health.after_backward(loss)
            opt.step()
            if health is not None:
                health.after_step()
            times.append(clock() - t0)
        if health is not None:
            health.close()
    return times[WARMUP:]


def lightning(steps: int, monitored: bool) -> list[float]:
    import lightning as L

    from healthcheck.integrations.lightning import HealthCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()

        def training_step(self, batch, idx):
            x, y = batch
            return (self.net(x) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Timer(L.Callback):
        def __init__(self):
            self.times, self._t0 = [], 0.0

        def on_train_batch_start(self, *args):
            self._t0 = clock()

        def on_train_batch_end(self, *args):
            self.times.append(clock() - self._t0)

    torch.manual_seed(0)
    X, Y = data(steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=BATCH)
    timer = Timer()
    with tempfile.TemporaryDirectory() as run_dir:
        callbacks = ([HealthCallback(run_dir, console=False)] if monitored else []) + [timer]
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        trainer.fit(Module(), loader)
    return timer.times[WARMUP:]


def huggingface(steps: int, monitored: bool) -> list[float]:
    import transformers

    from healthcheck.integrations.huggingface import HealthCallback

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model()

        def forward(self, x, y):
            return {"loss": (self.net(x) - y).pow(2).mean()}

    class Pairs(torch.utils.data.Dataset):
        def __init__(self):
            self.X, self.Y = data(steps)

        def __len__(self):
            return len(self.X)

        def __getitem__(self, i):
            return {"x": self.X[i], "y": self.Y[i]}

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.times, self._t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = clock()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(clock() - self._t0)

    torch.manual_seed(0)
    timer = Timer()
    with tempfile.TemporaryDirectory() as run_dir:
        args = transformers.TrainingArguments(
            output_dir=run_dir, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
            logging_strategy="no", per_device_train_batch_size=BATCH, learning_rate=1e-3, num_train_epochs=1,
            seed=0, max_grad_norm=0.0)
        callbacks = ([HealthCallback(run_dir + "/run", console=False)] if monitored else []) + [timer]
        transformers.Trainer(model=Regressor(), args=args, train_dataset=Pairs(), callbacks=callbacks).train()
    return timer.times[WARMUP:]


INTEGRATIONS = {"plain": plain, "lightning": lightning, "huggingface": huggingface}


def available(name: str) -> bool:
    needs = {"plain": (), "lightning": ("lightning",), "huggingface": ("transformers", "accelerate")}[name]
    try:
        for module in needs:
            __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time the process's CPU time, which a loaded machine's other "
                             "processes do not inflate (torch runs on one thread here)")
    args = parser.parse_args()
    global clock
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(1)
    names = [n for n in INTEGRATIONS if available(n)]
    times: dict[tuple[str, bool], list[float]] = {(n, on): [] for n in names for on in (False, True)}
    for name in names:  # a round that is not counted: first-use costs (imports, thread pools)
        for on in (False, True):
            INTEGRATIONS[name](WARMUP + 2, on)
    for r in range(args.rounds):
        for name in names:
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                times[(name, on)] += INTEGRATIONS[name](args.steps, on)
    results = {}
    print(f"{'integration':12s} {'off (ms)':>9s} {'on (ms)':>9s} {'ratio':>6s}")
    for name in names:
        off, on = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        results[name] = {"off_ms": off * 1e3, "on_ms": on * 1e3, "ratio": on / off,
                         "steps": len(times[(name, True)])}
        print(f"{name:12s} {off * 1e3:9.3f} {on * 1e3:9.3f} {on / off:6.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"torch": torch.__version__, "threads": 1, "rounds": args.rounds, "steps": args.steps,
                       "clock": args.clock, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
