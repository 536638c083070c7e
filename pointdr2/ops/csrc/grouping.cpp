// CPU kernels for pointdr2.ops (FPS with optional origin skip, ball query, kNN, three_nn),
// float32 and float64.
//
// Squared distances are computed exactly like the torch backend, (dx*dx + dy*dy) + dz*dz in the
// input precision, and the build disables FMA contraction, so boundary (d^2 == r^2) and tie
// decisions are identical across backends. Coordinates are read from planar [B, 3, N] copies so
// the inner loops are unit-stride and vectorise; batches/queries run under at::parallel_for.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // points per distance block: fits in L1 with its coordinates
// Distance evaluations a thread should get before work is split: smaller problems run on the
// calling thread, where waking the OpenMP team would cost more than it saves.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 20;

inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_item));
}

template <typename T>
inline void sqdist_block(const T* x, const T* y, const T* z, T qx, T qy, T qz, int64_t n, T* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T dx = x[j] - qx;
    const T dy = y[j] - qy;
    const T dz = z[j] - qz;
    out[j] = (dx * dx + dy * dy) + dz * dz;
  }
}

template <typename T> struct SameSizeInt;
template <> struct SameSizeInt<float> { using type = int32_t; };
template <> struct SameSizeInt<double> { using type = int64_t; };

// skip (optional, uint8 [B, N]): points never picked after the first (pointnet2_ops' origin
// skip; the mask is computed once in Python so every backend uses the same one). They still get
// their distances updated, they just take no part in the maximum; when no candidate is left
// (every point skipped) the pick is index 0, as in pointnet2_ops.
template <typename T>
void fps_kernel(const T* planes, const uint8_t* skip, int64_t B, int64_t N, int64_t npoint, int64_t* out) {
  using I = typename SameSizeInt<T>::type;
  at::parallel_for(0, B, grain(N * npoint), [&](int64_t b0, int64_t b1) {
    std::vector<T> mind(N);
    for (int64_t b = b0; b < b1; ++b) {
      const T* __restrict x = planes + b * 3 * N;
      const T* __restrict y = x + N;
      const T* __restrict z = y + N;
      const uint8_t* __restrict s = skip ? skip + b * N : nullptr;
      int64_t* o = out + b * npoint;
      std::fill(mind.begin(), mind.end(), std::numeric_limits<T>::infinity());
      int64_t last = 0;
      o[0] = 0;
      for (int64_t i = 1; i < npoint; ++i) {
        const T cx = x[last], cy = y[last], cz = z[last];
        // Pass 1 (vectorised): update the running minimum and track its maximum. Minimum
        // distances are non-negative, so their IEEE bit patterns order like the values and the
        // maximum can be an integer reduction, which vectorises without -ffast-math.
        I best = -1;
        T* __restrict md = mind.data();
        if (s) {
          for (int64_t j = 0; j < N; ++j) {
            const T dx = x[j] - cx;
            const T dy = y[j] - cy;
            const T dz = z[j] - cz;
            const T d = (dx * dx + dy * dy) + dz * dz;
            const T m = d < md[j] ? d : md[j];
            md[j] = m;
            I bits;
            std::memcpy(&bits, &m, sizeof(bits));
            bits = s[j] ? I(-1) : bits;
            best = bits > best ? bits : best;
          }
        } else {
          for (int64_t j = 0; j < N; ++j) {
            const T dx = x[j] - cx;
            const T dy = y[j] - cy;
            const T dz = z[j] - cz;
            const T d = (dx * dx + dy * dy) + dz * dz;
            const T m = d < md[j] ? d : md[j];
            md[j] = m;
            I bits;
            std::memcpy(&bits, &m, sizeof(bits));
            best = bits > best ? bits : best;
          }
        }
        // Pass 2: the first candidate holding the maximum (lowest index wins ties).
        int64_t j = 0;
        if (best >= 0) {
          T best_value;
          std::memcpy(&best_value, &best, sizeof(best_value));
          while (md[j] != best_value || (s && s[j])) ++j;
        }
        last = j;
        o[i] = last;
      }
    }
  });
}

template <typename T>
void ball_query_kernel(const T* planes, const T* q, int64_t B, int64_t N, int64_t S, T r2,
                       int64_t nsample, int64_t* out) {
  at::parallel_for(0, B * S, grain(N), [&](int64_t i0, int64_t i1) {
    T d2[kBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / S;
      const T* x = planes + b * 3 * N;
      const T* y = x + N;
      const T* z = y + N;
      const T* c = q + i * 3;
      int64_t* o = out + i * nsample;
      int64_t cnt = 0;
      for (int64_t j0 = 0; j0 < N && cnt < nsample; j0 += kBlock) {
        const int64_t n = std::min(kBlock, N - j0);
        sqdist_block(x + j0, y + j0, z + j0, c[0], c[1], c[2], n, d2);
        int hits = 0;
        for (int64_t j = 0; j < n; ++j) hits += d2[j] < r2;
        if (!hits) continue;
        for (int64_t j = 0; j < n && cnt < nsample; ++j) {
          if (d2[j] < r2) {
            if (cnt == 0) std::fill(o, o + nsample, j0 + j);  // first hit fills every slot
            o[cnt++] = j0 + j;
          }
        }
      }
      if (cnt == 0) std::fill(o, o + nsample, int64_t(0));
    }
  });
}

// k smallest (distance, index) pairs per query, ascending; scanning indices in increasing order
// and inserting only on a strictly smaller distance keeps ties in increasing index order.
template <typename T>
void knn_kernel(const T* planes, const T* q, int64_t B, int64_t N, int64_t S, int64_t k,
                T* dist, int64_t* idx) {
  at::parallel_for(0, B * S, grain(N), [&](int64_t i0, int64_t i1) {
    T d2[kBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / S;
      const T* x = planes + b * 3 * N;
      const T* y = x + N;
      const T* z = y + N;
      const T* c = q + i * 3;
      T* bd = dist + i * k;
      int64_t* bi = idx + i * k;
      std::fill(bd, bd + k, std::numeric_limits<T>::infinity());
      std::fill(bi, bi + k, int64_t(0));
      int64_t filled = 0;
      for (int64_t j0 = 0; j0 < N; j0 += kBlock) {
        const int64_t n = std::min(kBlock, N - j0);
        sqdist_block(x + j0, y + j0, z + j0, c[0], c[1], c[2], n, d2);
        if (filled == k) {  // vectorised test: does anything in this block beat the current k-th?
          const T worst = bd[k - 1];
          int better = 0;
          for (int64_t j = 0; j < n; ++j) better += d2[j] < worst;
          if (!better) continue;
        }
        for (int64_t j = 0; j < n; ++j) {
          const T d = d2[j];
          if (filled == k && !(d < bd[k - 1])) continue;
          int64_t pos = filled < k ? filled++ : k - 1;
          while (pos > 0 && d < bd[pos - 1]) {
            bd[pos] = bd[pos - 1];
            bi[pos] = bi[pos - 1];
            --pos;
          }
          bd[pos] = d;
          bi[pos] = j0 + j;
        }
      }
    }
  });
}

at::Tensor planar(const at::Tensor& xyz) { return xyz.transpose(1, 2).contiguous(); }

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 3 && t.size(2) == 3, name, " must have shape [B, N, 3]");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64");
}

}  // namespace

// skip: uint8 [B, N] (1 = never picked after the first) or an empty tensor for none.
at::Tensor furthest_point_sample(const at::Tensor& xyz, int64_t npoint, const at::Tensor& skip) {
  check(xyz, "xyz");
  const auto B = xyz.size(0), N = xyz.size(1);
  TORCH_CHECK(npoint >= 1 && npoint <= N, "npoint out of range");
  const bool has_skip = skip.numel() > 0;
  TORCH_CHECK(!has_skip || (skip.scalar_type() == at::kByte && skip.dim() == 2 && skip.size(0) == B &&
                            skip.size(1) == N), "skip must be uint8 [B, N] or empty");
  auto out = at::empty({B, npoint}, xyz.options().dtype(at::kLong));
  auto p = planar(xyz);
  auto sk = has_skip ? skip.contiguous() : skip;
  const uint8_t* sp = has_skip ? sk.data_ptr<uint8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "furthest_point_sample", [&] {
    fps_kernel<scalar_t>(p.data_ptr<scalar_t>(), sp, B, N, npoint, out.data_ptr<int64_t>());
  });
  return out;
}

at::Tensor ball_query(const at::Tensor& xyz, const at::Tensor& new_xyz, double r2, int64_t nsample) {
  check(xyz, "xyz");
  check(new_xyz, "new_xyz");
  const auto B = xyz.size(0), N = xyz.size(1), S = new_xyz.size(1);
  auto out = at::empty({B, S, nsample}, xyz.options().dtype(at::kLong));
  auto p = planar(xyz);
  auto q = new_xyz.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "ball_query", [&] {
    ball_query_kernel<scalar_t>(p.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, N, S,
                                static_cast<scalar_t>(r2), nsample, out.data_ptr<int64_t>());
  });
  return out;
}

std::vector<at::Tensor> knn(const at::Tensor& query, const at::Tensor& support, int64_t k) {
  check(query, "query");
  check(support, "support");
  const auto B = support.size(0), N = support.size(1), S = query.size(1);
  TORCH_CHECK(k >= 1 && k <= N, "k out of range");
  auto dist = at::empty({B, S, k}, query.options());
  auto idx = at::empty({B, S, k}, query.options().dtype(at::kLong));
  auto p = planar(support);
  auto q = query.contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn", [&] {
    knn_kernel<scalar_t>(p.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, N, S, k,
                         dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
  });
  return {dist, idx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("furthest_point_sample", &furthest_point_sample, "FPS [B,N,3] (+ skip mask) -> int64 [B,npoint]");
  m.def("ball_query", &ball_query, "ball query with squared radius r2 -> int64 [B,S,nsample]");
  m.def("knn", &knn, "k nearest neighbours -> (sqdist [B,S,k], int64 idx [B,S,k])");
}
