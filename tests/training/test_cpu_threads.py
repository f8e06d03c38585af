"""CPU threads: the CPUs a process may use (affinity, cgroup quota), less those other work keeps busy."""

import os
import subprocess
import sys

import pytest
from helpers import TINY_OVERRIDES, TRAIN_PY, cli_env, run_cli

from gpt_classifier.cpu_threads import (
    automatic_threads,
    busy_cpus,
    cgroup_cpu_limit,
    cpu_times,
    usable_cpus,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit_reads_v1_and_v2(tmp_path, files, limit):
    for name, text in files.items():
        write(tmp_path / name, text)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(
    ("quota", "affinity", "usable"),
    [
        (None, {0, 1, 2, 3}, 4),
        ("150000 100000", {0, 1, 2, 3}, 1),
        ("200000 100000", {0, 1, 2, 3}, 2),
        ("800000 100000", {0, 1}, 2),
        ("50000 100000", {0, 1}, 1),
    ],
)
def test_usable_cpus_is_affinity_capped_by_the_quota(tmp_path, quota, affinity, usable):
    if quota:
        write(tmp_path / "cpu.max", quota)
    assert usable_cpus(tmp_path, affinity) == usable


@pytest.mark.parametrize(
    ("usable", "busy", "threads"),
    [
        (2, 0.0, 2),
        (2, 0.49, 2),
        (2, 0.5, 1),
        (2, 1.49, 1),
        (2, 1.5, 1),
        (2, 2.0, 1),
        (2, 5.0, 1),
        (8, 2.5, 5),
        (1, 0.0, 1),
    ],
)
def test_automatic_threads_leaves_out_busy_cpus(usable, busy, threads):
    assert automatic_threads(usable, busy) == threads


def test_cpu_times_parses_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 100 5 0 0 0 0 0\n"
        "cpu0 1 2 3 40 5 6 7 8 9 10\n"
        "cpu1 10 0 0 50 0 0 0 0 0 0\n"
        "cpu12 1 1 1 1 1 1 1 1 0 0\n"
        "intr 1 2 3\n"
    )
    assert cpu_times({0, 12}, stat) == {0: (45, 72), 12: (2, 8)}


SPIN = (
    "import os, sys, time; os.sched_setaffinity(0, {int(sys.argv[1])}); print('spinning', flush=True); "
    "stop = time.time() + 20\nwhile time.time() < stop: pass"
)


def test_busy_cpus_sees_a_spinning_process():
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)], stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline().strip() == "spinning"  # pinned to `cpu` and running
        assert busy_cpus({cpu}, seconds=0.5) > 0.8
    finally:
        spinner.kill()
        spinner.wait()


def threads_after(code, env_extra=None):
    env = {**cli_env(), **(env_extra or {})}
    env.pop("OMP_NUM_THREADS", None)
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


APPLY = "import torch; torch.set_num_threads(7); from gpt_classifier.cpu_threads import apply_threads; "


def test_apply_threads_sets_torch_and_respects_explicit_choices():
    usable = len(os.sched_getaffinity(0))
    assert 1 <= threads_after(APPLY + "print(apply_threads())") <= usable  # automatic replaced the 7
    assert threads_after(APPLY + "print(apply_threads(3))") == 3
    assert threads_after(APPLY + "print(apply_threads(0))") == 7  # 0: leave torch's setting alone
    assert threads_after(APPLY + "print(apply_threads())", {"OMP_NUM_THREADS": "1"}) == 7  # user's env wins


def test_load_predictor_applies_the_automatic_threads(tmp_path):
    code = (
        "import torch, sys; torch.set_num_threads(7)\n"
        "from gpt_classifier.deploy.predictor import load_predictor\n"
        "try:\n    load_predictor(sys.argv[1])\nexcept Exception:\n    pass\n"
        "print(torch.get_num_threads())"
    )
    missing = tmp_path / "absent.ckpt"  # threads are set before the file is read
    env = cli_env()
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-c", code, str(missing)], env=env, capture_output=True, text=True, check=True
    )
    assert 1 <= int(result.stdout.split()[-1]) <= len(os.sched_getaffinity(0))


def test_training_logs_the_threads_it_uses(tmp_path):
    result = run_cli(
        TRAIN_PY,
        [
            *TINY_OVERRIDES,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "test=false",
            "threads=1",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "CPU threads: 1 (set)" in (tmp_path / "run" / "train.log").read_text()
