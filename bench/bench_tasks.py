"""Benchmark: env steps/s of each task (tasks.py) without and with cameras (agentview +
eye-in-hand, 84x84), against raw robosuite NutAssemblySquare (default settings, no cameras),
all in the same run.

    .venv/bin/python bench/bench_tasks.py [--steps 200]
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tasks  # noqa: E402


def rate(step, n):
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    import robosuite as suite  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    raw = suite.make("NutAssemblySquare", robots="Panda", has_renderer=False, has_offscreen_renderer=False,
                     use_camera_obs=False, control_freq=tasks.CONTROL_FREQ, ignore_done=True)
    raw.reset()
    base = rate(lambda: raw.step(np.zeros(raw.action_dim)), a.steps)
    print(f"raw robosuite NutAssemblySquare, no cameras: {base:7.1f} steps/s (baseline)")
    for task in tasks.TASK_NAMES:
        for cams in ((), ("agentview", "robot0_eye_in_hand")):
            env = tasks.make_env(task, "source", cameras=cams)
            env.reset(0)
            r = rate(lambda: env.step(np.zeros(7)), a.steps)
            label = "2 cameras 84x84" if cams else "no cameras"
            print(f"{task:12s} {label:16s}: {r:7.1f} steps/s = {r / base:.2f}x baseline")


if __name__ == "__main__":
    main()
