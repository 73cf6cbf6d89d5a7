"""mlx_lm.lora exactly as `python -m mlx_lm lora ARGS` runs it (its own main(): argument parser, YAML
merge, defaults, model load, dataset, trainer), with one change: a reporting callback that prints
mlx-lm's classic per-report line

  Iter N: Train loss X, Learning Rate X, It/sec X, Tokens/sec X, Trained Tokens N, Peak mem X GB

from the dict its trainer hands to callbacks (mlx-lm >= 0.32's rich UI prints tokens/s rounded to
an integer and no peak memory; the classic line is also what `lmtune lora` prints, so one parser
reads both). Used by bench/bench_lora_cpu.sh.
Usage: bench_lora_mlx.py [mlx_lm.lora arguments]
"""
import sys

import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback


class ClassicLines(TrainingCallback):
    def on_train_loss_report(self, i):
        print(f"Iter {i['iteration']}: Train loss {i['train_loss']:.3f}, Learning Rate {i['learning_rate']:.3e}, "
              f"It/sec {i['iterations_per_second']:.3f}, Tokens/sec {i['tokens_per_second']:.3f}, "
              f"Trained Tokens {i['trained_tokens']}, Peak mem {i['peak_memory']:.3f} GB", flush=True)

    def on_val_loss_report(self, i):
        print(f"Iter {i['iteration'] + 1}: Val loss {i['val_loss']:.3f}, Val took {i['val_time']:.3f}s", flush=True)


def _callbacks(report_to=None, **kw):
    if report_to:
        sys.exit("bench_lora_mlx.py: --report-to is not supported here")
    return ClassicLines()


if __name__ == "__main__":
    lora.get_reporting_callbacks = _callbacks  # run() looks the name up in its module at call time
    lora.main()
