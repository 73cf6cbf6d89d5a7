// mlx-lm's training loop (tuner/trainer.py: train, evaluate) with its classic output lines, plus
// what its users ask for: --epochs, --grad-clip, validation on a fixed subset, the best adapter by
// validation loss with --early-stop patience, metrics.jsonl, a loss-curve SVG, and true resume from
// a checkpoint folder (adapters, optimizer state, step, RNG, accumulated gradients).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include "backend/collective.h"
#include "dist/comm.h"
#include "models/model.h"
#include "train/dataset.h"
#include "train/optimizers.h"
#include "train/sharding.h"

namespace lmtune::train {

struct TrainingArgs {
  int64_t batch_size = 4;
  int64_t iters = 1000;      // micro-batches, as mlx-lm; replaced by epochs when epochs > 0
  int64_t epochs = 0;        // passes over the length-sorted batches of the training set
  int64_t val_batches = 25;  // -1: all; the same batches at every evaluation
  int64_t steps_per_report = 10;
  int64_t steps_per_eval = 200;
  int64_t save_every = 100;
  int64_t max_seq_length = 2048;
  int64_t grad_accumulation_steps = 1;
  bool grad_checkpoint = false;
  bool pack = false;       // train on packed rows (packed_batches, make_packed_batch); validation stays unpacked
  double grad_clip = 0.0;  // max global L2 norm of the averaged gradient; 0 = off
  int64_t early_stop = 0;  // stop after this many evaluations without a better val loss; 0 = off
  uint64_t seed = 0;
  std::string adapter_path = "adapters";
  std::string resume;     // a checkpoint folder (adapter_path/checkpoints/NNNNNNN) to continue from
  bool progress = false;  // a progress bar (rate, ETA, last loss) on stderr; the CLI turns it on
                          // when stdout and stderr are both terminals
  // Data parallel (WORLD_SIZE > 1; train/data_parallel.h): this rank trains and validates on its share
  // of every batch, the group adds up losses and gradients, and only rank 0 writes files (the CLI
  // gives the other ranks an `out` that discards). Null: one process, as before.
  dist::Comm* comm = nullptr;
  DeviceCollective* device_comm = nullptr;  // with comm: the gradients' sums on the devices (NCCL)
  // Full fine-tuning with the blocks' weights, their gradients and optimizer state sharded across the
  // group (train/sharding.h; gradient checkpointing on), made by the caller over the model's trainable
  // parameters; it outlives train(), so that an evaluate after it runs sharded too. The optimizer must
  // update element by element.
  ShardedWeights* sharded = nullptr;
};

struct TrainResult {
  int64_t iterations = 0;     // the last iteration run
  double best_val_loss = -1;  // -1 without validation
  int64_t best_iteration = 0;
  bool early_stopped = false;
};

// Token-weighted mean loss over num_batches (-1 = all) of ds's length-sorted batches, taken in an
// order fixed by seed (mlx-lm draws a new random subset each time). No gradients. With comm, each
// rank scores its share of every batch and every rank gets the group's mean.
double evaluate(Model& model, const Dataset& ds, int64_t batch_size, int64_t num_batches, int64_t max_seq_length,
                uint64_t seed = 0, dist::Comm* comm = nullptr);

// Trains model's trainable parameters (train/adapters.h) in place. `lr` is the optimizer's schedule
// (for the printed learning rate). Writes into args.adapter_path: adapters.safetensors (final),
// {iter:07d}_adapters.safetensors and checkpoints/{iter:07d}/ every save_every, best_adapters.safetensors
// (lowest val loss), metrics.jsonl and loss.svg. Lines go to out, as mlx-lm's classic trainer prints them.
TrainResult train(Model& model, Optimizer& opt, const Schedule& lr, const Dataset& train_set, const Dataset& valid_set,
                  const TrainingArgs& args, std::FILE* out = stdout);

// loss.svg from a metrics.jsonl (train and val loss against iteration).
void write_loss_svg(const std::string& metrics_jsonl, const std::string& svg_path);

}  // namespace lmtune::train
