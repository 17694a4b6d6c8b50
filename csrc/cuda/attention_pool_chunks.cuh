// The chunks the attention pooling CUDA kernels split bags into (forward and backward files):
// at most kCudaChunkRows rows of one bag each, located through the chunk plan that
// lrmil/ops/attention_pool.py computes on the device (cuda_chunk_plan).
#pragma once

#include "common.cuh"
#include "lrmil/attention_pool.h"

namespace lrmil {
namespace attention_pool_cuda {

constexpr int kWarps = 8;  // warps per block
constexpr int kThreads = kWarps * cuda::kWarp;

// The chunk plan of lrmil/ops/attention_pool.py (cuda_chunk_plan) and the chunk's rows.
struct Chunk {
  int64_t bag = -1, index = 0, start = 0, end = 0;
  bool single = true;  // the bag's only chunk
  int64_t slot = 0;    // its partial-sum slot when the bag has several
};

__device__ __forceinline__ Chunk chunk_at(const AttentionPoolParams& p, int64_t c) {
  const int64_t* first_chunk = p.plan;
  const int64_t* first_slot = p.plan + p.n_bags + 1;
  Chunk ch;
  if (c >= first_chunk[p.n_bags]) return ch;  // past the last chunk: the grid is a bound
  ch.bag = bag_of_row(first_chunk, p.n_bags, c);  // every bag has >= 1 chunk
  ch.index = c - first_chunk[ch.bag];
  const int64_t bag_end = p.offsets[ch.bag + 1];
  ch.start = p.offsets[ch.bag] + ch.index * kCudaChunkRows;
  ch.end = ch.start + kCudaChunkRows < bag_end ? ch.start + kCudaChunkRows : bag_end;
  ch.single = first_slot[ch.bag + 1] == first_slot[ch.bag];
  ch.slot = first_slot[ch.bag] + ch.index;
  return ch;
}

}  // namespace attention_pool_cuda
}  // namespace lrmil
