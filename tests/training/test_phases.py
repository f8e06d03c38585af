"""`PhaseTimer` driven through Lightning's hooks by hand: each phase gets the seconds spent in it (not
only a total that the phases sum to by construction), and the cache pass's own clock is moved out of
the phase it ran in."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from gpt_classifier.training.phases import PHASES, PhaseTimer

NAP = 0.15  # seconds slept in a phase: a lower bound of what it must get (sleep never ends early)


def fakes(tmp_path):
    trainer = SimpleNamespace(
        sanity_checking=False,
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        strategy=SimpleNamespace(checkpoint_io=SimpleNamespace()),
    )
    module = SimpleNamespace(device=SimpleNamespace(type="cpu"), cache=None)
    return trainer, module


def test_each_phase_gets_the_seconds_spent_in_it(tmp_path):
    trainer, module = fakes(tmp_path)
    timer = PhaseTimer()
    timer.setup(trainer, module, "fit")
    steps = [
        ("on_train_batch_start", "training", 1),
        ("on_validation_start", "validation", 2),
        ("on_validation_end", "checkpoints", 3),
        ("on_test_start", "final_evaluation", 4),
        ("on_test_end", "reports", 5),
    ]
    started = time.perf_counter()
    for hook, _, naps in steps:
        getattr(timer, hook)(trainer, module)
        time.sleep(naps * NAP)
    result = timer.finish(trainer, module)
    elapsed = time.perf_counter() - started
    for _, phase, naps in steps:
        assert result["wall"][phase] >= naps * NAP - 0.002, phase
    spent = sum(result["wall"][phase] for _, phase, _ in steps)
    assert spent <= elapsed + 0.002  # nothing counted twice
    assert result["wall"]["cache"] == 0 and result["to_first_batch"] >= 0
    assert json.loads((tmp_path / "phases.json").read_text()) == result
    assert set(result["wall"]) == set(result["cpu"]) == set(PHASES)


def test_the_cache_pass_is_taken_from_the_phase_it_ran_in(tmp_path):
    trainer, module = fakes(tmp_path)
    module.cache = SimpleNamespace(build_seconds=0.0, build_cpu_seconds=0.0)
    timer = PhaseTimer()
    timer.on_train_epoch_start(trainer, module)
    time.sleep(2 * NAP)
    module.cache.build_seconds, module.cache.build_cpu_seconds = NAP, 0.001  # the pass ran in the step
    timer.on_validation_start(trainer, module)
    result = timer.finish(trainer, module)
    assert result["wall"]["cache"] == pytest.approx(NAP, abs=1e-3)
    assert result["cpu"]["cache"] == pytest.approx(0.001, abs=1e-3)
    assert result["wall"]["training"] >= NAP - 0.002  # 2 naps in the step, less the pass's one


def test_the_sanity_check_counts_as_start_up(tmp_path):
    trainer, module = fakes(tmp_path)
    timer = PhaseTimer()
    trainer.sanity_checking = True
    timer.on_validation_start(trainer, module)
    timer.on_validation_end(trainer, module)
    time.sleep(NAP)
    trainer.sanity_checking = False
    timer.on_train_batch_start(trainer, module)
    result = timer.finish(trainer, module)
    assert result["wall"]["startup"] >= NAP - 0.002
    assert result["wall"]["checkpoints"] < NAP
