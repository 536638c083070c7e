// CPU kernels for pointdr2.ops (FPS with optional origin skip, ball query, kNN, three_nn),
// float32 and float64.
//
// Squared distances are computed exactly like the torch backend, (dx*dx + dy*dy) + dz*dz in the
// input precision, and the build disables FMA contraction, so boundary (d^2 == r^2) and tie
// decisions are identical across backends. Coordinates are read from planar [B, 3, N] copies so
// the inner loops are unit-stride and vectorise; batches/queries run under at::parallel_for.
//
// Every op has two exact paths: a brute-force scan over all N points, and (leaf > 0) a kd-tree
// whose leaves ("buckets") hold at most `leaf` points. The tree only decides which points need
// not be looked at; every distance it does compute is the brute-force expression, and it skips a
// subtree only when a lower bound proves that no distance inside could change the answer (see
// box_lower_bound), so both paths return the same indices and distances bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // points per distance block: fits in L1 with its coordinates
static_assert(kBlock <= 64, "the kNN bucket mask is one uint64_t");
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

// Bit j of the result: d2[j] <= bound, for j < len <= 64 (one compare per vector where the CPU has
// one; the same IEEE comparison as the scalar loop).
template <typename T>
inline uint64_t le_mask(const T* d2, int64_t len, T bound) {
  uint64_t m = 0;
  for (int64_t j = 0; j < len; ++j) m |= uint64_t(d2[j] <= bound) << j;
  return m;
}

#if defined(__AVX512F__)
template <>
inline uint64_t le_mask<float>(const float* d2, int64_t len, float bound) {
  const __m512 b = _mm512_set1_ps(bound);
  uint64_t m = 0;
  for (int64_t j0 = 0; j0 < len; j0 += 16) {
    const int64_t n = std::min<int64_t>(16, len - j0);
    const __mmask16 live = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(live, d2 + j0);
    m |= uint64_t(_mm512_mask_cmp_ps_mask(live, v, b, _CMP_LE_OQ)) << j0;
  }
  return m;
}
#elif defined(__AVX2__)
template <>
inline uint64_t le_mask<float>(const float* d2, int64_t len, float bound) {
  const __m256 b = _mm256_set1_ps(bound);
  uint64_t m = 0;
  int64_t j0 = 0;
  for (; j0 + 8 <= len; j0 += 8)
    m |= uint64_t(uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(d2 + j0), b, _CMP_LE_OQ)))) << j0;
  for (; j0 < len; ++j0) m |= uint64_t(d2[j0] <= bound) << j0;
  return m;
}
#endif

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

// Hits of one ball query in index order over [j, end) of the planar coordinates, appended to
// o[cnt...] until nsample are found; j and cnt advance. Blocks of kBlock points (vectorised
// distances, the brute force's expression), so j stops at a block boundary (or end) unless the
// ball fills up.
template <typename T>
inline void ball_scan(const T* x, const T* y, const T* z, const T* c, T r2, int64_t nsample, int64_t end,
                      int64_t& j, int64_t* o, int64_t& cnt) {
  T d2[kBlock];
  while (j < end && cnt < nsample) {
    const int64_t j0 = j, n = std::min(kBlock, end - j0);
    sqdist_block(x + j0, y + j0, z + j0, c[0], c[1], c[2], n, d2);
    j = j0 + n;
    int hits = 0;
    for (int64_t k = 0; k < n; ++k) hits += d2[k] < r2;
    if (!hits) continue;
    for (int64_t k = 0; k < n && cnt < nsample; ++k)
      if (d2[k] < r2) o[cnt++] = j0 + k;
  }
}

// The answer's tail: empty slots repeat the first hit; no hit at all is index 0 everywhere.
inline void ball_fill(int64_t* o, int64_t cnt, int64_t nsample) {
  std::fill(o + cnt, o + nsample, cnt ? o[0] : int64_t(0));
}

template <typename T>
void ball_query_kernel(const T* planes, const T* q, int64_t B, int64_t N, int64_t S, T r2,
                       int64_t nsample, int64_t* out) {
  at::parallel_for(0, B * S, grain(N), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* x = planes + (i / S) * 3 * N;
      int64_t* o = out + i * nsample;
      int64_t cnt = 0, j = 0;
      ball_scan(x, x + N, x + 2 * N, q + i * 3, r2, nsample, N, j, o, cnt);
      ball_fill(o, cnt, nsample);
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

// ----------------------------------------------------------------------------- kd-tree buckets
//
// Exactness rests on one lemma. For a box [lo, hi] and a centre c, let q = clamp(c, lo, hi) and
// LB = (fx*fx + fy*fy) + fz*fz with fx = q.x - c.x etc., all in T with round-to-nearest and no
// FMA, i.e. the very expression the brute force evaluates for a point. Then for every point p in
// the box the brute force's d(p, c) >= LB, with no rounding slack: per axis, p.x - c.x and
// q.x - c.x have the same sign (or q.x == c.x) and |p.x - c.x| >= |q.x - c.x| exactly; IEEE
// rounding is monotone, so the rounded differences keep that order in magnitude, and the rounded
// squares and the two rounded sums (taken in the same order) are monotone in their operands.
// Overflow to inf preserves the order too, and finite inputs never produce NaN. So a subtree
// whose LB rules a change out (FPS: LB >= its largest minimum distance; ball query:
// LB >= r^2; kNN: LB beyond the current k-th) contains no point that the brute force would treat
// differently, and skipping it changes nothing.
template <typename T>
struct KdNode {
  T lo[3], hi[3];   // bounding box of the node's points (their exact coordinates)
  int32_t begin;    // the node's points are [begin, end) in tree order
  int32_t end;
  int32_t right;    // right child (the left child is node + 1); -1 for a leaf
  int32_t min_id;   // lowest original index in the subtree
};

template <typename T>
struct KdTree {
  std::vector<KdNode<T>> nodes;  // preorder; nodes[0] is the root (absent for an empty tree)
  std::vector<T> x, y, z;        // point coordinates in tree order (planar, unit stride in a leaf)
  std::vector<int32_t> id;       // original index of each point
};

template <typename T>
inline T box_lower_bound(const KdNode<T>& n, T cx, T cy, T cz) {
  // Same operand order as the per-point expression (point minus centre); see the lemma above.
  const T dx = std::min(std::max(cx, n.lo[0]), n.hi[0]) - cx;
  const T dy = std::min(std::max(cy, n.lo[1]), n.hi[1]) - cy;
  const T dz = std::min(std::max(cz, n.lo[2]), n.hi[2]) - cz;
  return (dx * dx + dy * dy) + dz * dz;
}

// Tree construction: points are sorted along a Morton (Z-order) curve of their coordinates
// quantised to 16 bits per axis (a linear-time radix sort: no branchy median selection, which
// dominated the build on million-point clouds), then split recursively at the highest key bit on
// which a node's points differ, i.e. at the midpoint of its quantisation cell along x, y or z in
// turn. Only which point goes to which node depends on the quantisation; every box is the exact
// bounding box of the points placed in its node, so the pruning bounds stay exact.
constexpr int kMortonBits = 16;

inline uint64_t spread_bits(uint64_t v) {  // bit i of v -> bit 3i (v < 2^16)
  v &= 0xffff;
  v = (v | v << 16) & 0x0000ff0000ffULL;
  v = (v | v << 8) & 0x00f00f00f00fULL;
  v = (v | v << 4) & 0x0c30c30c30c3ULL;
  v = (v | v << 2) & 0x249249249249ULL;
  return v;
}

struct KeyedId {
  uint64_t key;
  int32_t id;
};

// Stable LSD radix sort on the 48-bit keys, a byte per pass (256 buckets keep the scatter
// cache-friendly); every histogram comes from one read, and a pass whose byte is the same for
// every key is skipped. Stability keeps equal keys in increasing index order.
inline void radix_sort(std::vector<KeyedId>& a) {
  constexpr int kPasses = 3 * kMortonBits / 8;
  std::vector<size_t> count(kPasses * 256, 0);
  for (const KeyedId& e : a)
    for (int p = 0; p < kPasses; ++p) ++count[p * 256 + ((e.key >> (8 * p)) & 255)];
  std::vector<KeyedId> tmp(a.size());
  for (int p = 0; p < kPasses; ++p) {
    size_t* c = count.data() + p * 256;
    if (c[(a[0].key >> (8 * p)) & 255] == a.size()) continue;
    size_t sum = 0;
    for (int d = 0; d < 256; ++d) {
      const size_t here = c[d];
      c[d] = sum;
      sum += here;
    }
    for (const KeyedId& e : a) tmp[c[(e.key >> (8 * p)) & 255]++] = e;
    a.swap(tmp);
  }
}

template <typename T>
int32_t build_node(KdTree<T>& t, const uint64_t* key, int32_t b, int32_t e, int64_t leaf) {
  const int32_t node = static_cast<int32_t>(t.nodes.size());
  t.nodes.emplace_back();
  KdNode<T> n;
  n.begin = b;
  n.end = e;
  n.right = -1;
  if (e - b <= leaf) {
    for (int a = 0; a < 3; ++a) {
      n.lo[a] = std::numeric_limits<T>::infinity();
      n.hi[a] = -std::numeric_limits<T>::infinity();
    }
    const T* c[3] = {t.x.data(), t.y.data(), t.z.data()};
    int32_t min_id = std::numeric_limits<int32_t>::max();
    for (int32_t i = b; i < e; ++i) {
      for (int a = 0; a < 3; ++a) {
        n.lo[a] = std::min(n.lo[a], c[a][i]);
        n.hi[a] = std::max(n.hi[a], c[a][i]);
      }
      min_id = std::min(min_id, t.id[i]);
    }
    n.min_id = min_id;
  } else {
    int32_t m;
    const uint64_t differ = key[b] ^ key[e - 1];  // sorted: bits above the highest set one are shared
    if (differ == 0) {
      m = b + (e - b) / 2;  // one quantisation cell: split by count (any split is correct)
    } else {
      const uint64_t bit = uint64_t(1) << (63 - __builtin_clzll(differ));
      m = static_cast<int32_t>(std::partition_point(key + b, key + e, [bit](uint64_t k) { return !(k & bit); }) - key);
    }
    build_node(t, key, b, m, leaf);
    n.right = build_node(t, key, m, e, leaf);
    const KdNode<T>& l = t.nodes[node + 1];
    const KdNode<T>& r = t.nodes[n.right];
    for (int a = 0; a < 3; ++a) {
      n.lo[a] = std::min(l.lo[a], r.lo[a]);
      n.hi[a] = std::max(l.hi[a], r.hi[a]);
    }
    n.min_id = std::min(l.min_id, r.min_id);
  }
  t.nodes[node] = n;
  return node;
}

// Morton keys of the points of one cloud xyz [N, 3] (row-major), quantised to 16 bits per axis over
// their bounding box, leaving out those with skip[j] != 0 (skip may be null), sorted (stable).
template <typename T>
void morton_order(const T* xyz, const uint8_t* skip, int64_t N, std::vector<KeyedId>& order) {
  T mn[3], mx[3];
  for (int a = 0; a < 3; ++a) {
    mn[a] = std::numeric_limits<T>::infinity();
    mx[a] = -std::numeric_limits<T>::infinity();
  }
  for (int64_t j = 0; j < N; ++j) {
    if (skip && skip[j]) continue;
    for (int a = 0; a < 3; ++a) {
      mn[a] = std::min(mn[a], xyz[3 * j + a]);
      mx[a] = std::max(mx[a], xyz[3 * j + a]);
    }
  }
  double scale[3];
  for (int a = 0; a < 3; ++a) {
    const double extent = double(mx[a]) - double(mn[a]);
    scale[a] = extent > 0 ? double((1 << kMortonBits) - 1) / extent : 0.0;
  }
  order.clear();
  order.reserve(N);
  for (int64_t j = 0; j < N; ++j) {
    if (skip && skip[j]) continue;
    uint64_t k = 0;
    for (int a = 0; a < 3; ++a) {
      const double q = std::min((double(xyz[3 * j + a]) - double(mn[a])) * scale[a], double((1 << kMortonBits) - 1));
      k |= spread_bits(static_cast<uint64_t>(q)) << (2 - a);
    }
    order.push_back({k, static_cast<int32_t>(j)});
  }
  if (!order.empty()) radix_sort(order);
}

// Tree over the points of one cloud xyz [N, 3] (row-major, as the op receives it: gathering whole
// rows in Morton order touches one cache line per point), leaving out those with skip[j] != 0
// (skip may be null).
template <typename T>
void build_tree(KdTree<T>& t, const T* xyz, const uint8_t* skip, int64_t N, int64_t leaf) {
  std::vector<KeyedId> order;
  morton_order(xyz, skip, N, order);
  const int32_t n = static_cast<int32_t>(order.size());
  t.nodes.clear();
  t.x.resize(n);
  t.y.resize(n);
  t.z.resize(n);
  t.id.resize(n);
  if (n == 0) return;
  std::vector<uint64_t> key(n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t j = order[i].id;
    key[i] = order[i].key;
    t.id[i] = j;
    t.x[i] = xyz[3 * j];
    t.y[i] = xyz[3 * j + 1];
    t.z[i] = xyz[3 * j + 2];
  }
  leaf = std::max<int64_t>(1, leaf);
  t.nodes.reserve(4 * (n / leaf + 1));
  build_node(t, key.data(), 0, n, leaf);
}

// FPS state over the tree: mind[i] is the running minimum distance of the tree's i-th point;
// best[node] / cand[node] the largest mind in the subtree and the lowest original index holding it.
template <typename T>
struct FpsTreeState {
  std::vector<T> mind, best;
  std::vector<int32_t> cand;
};

// The FPS combine rule, the brute force's first maximum: (a's maximum, its lowest index) comes before
// b's when the maximum is larger, or equal with a lower original index.
template <typename T>
inline bool fps_first(T best_a, int32_t cand_a, T best_b, int32_t cand_b) {
  return best_a > best_b || (best_a == best_b && cand_a < cand_b);
}

// Fold the new pick c into the subtree at `node`. A subtree with LB >= best[node] is left alone:
// every point p there has d(p, c) >= LB >= best >= mind[p], so the brute force's min(mind, d)
// keeps mind[p] (the update only takes a strictly smaller d).
template <typename T>
void fps_tree_update(const KdTree<T>& t, FpsTreeState<T>& s, int32_t node, T cx, T cy, T cz) {
  using I = typename SameSizeInt<T>::type;
  const KdNode<T>& n = t.nodes[node];
  if (!(box_lower_bound(n, cx, cy, cz) < s.best[node])) return;
  if (n.right < 0) {
    const T* __restrict x = t.x.data();
    const T* __restrict y = t.y.data();
    const T* __restrict z = t.z.data();
    T* __restrict md = s.mind.data();
    I top = -1;  // non-negative floats order like their bit patterns (see fps_kernel)
    for (int32_t j = n.begin; j < n.end; ++j) {
      const T dx = x[j] - cx;
      const T dy = y[j] - cy;
      const T dz = z[j] - cz;
      const T d = (dx * dx + dy * dy) + dz * dz;
      const T m = d < md[j] ? d : md[j];
      md[j] = m;
      I bits;
      std::memcpy(&bits, &m, sizeof(bits));
      top = bits > top ? bits : top;
    }
    T top_value;
    std::memcpy(&top_value, &top, sizeof(top_value));
    // lowest original index holding the maximum (the brute force's first maximum)
    const int32_t* __restrict id = t.id.data();
    int32_t first = std::numeric_limits<int32_t>::max();
    for (int32_t j = n.begin; j < n.end; ++j) first = md[j] == top_value && id[j] < first ? id[j] : first;
    s.best[node] = top_value;
    s.cand[node] = first;
    return;
  }
  const int32_t l = node + 1, r = n.right;
  fps_tree_update(t, s, l, cx, cy, cz);
  fps_tree_update(t, s, r, cx, cy, cz);
  const bool take_right = fps_first(s.best[r], s.cand[r], s.best[l], s.cand[l]);
  s.best[node] = take_right ? s.best[r] : s.best[l];
  s.cand[node] = take_right ? s.cand[r] : s.cand[l];
}

// Every mind starts at inf, so before any update a subtree's first maximum is its lowest index.
template <typename T>
void fps_tree_reset(const KdTree<T>& t, FpsTreeState<T>& s) {
  s.mind.assign(t.id.size(), std::numeric_limits<T>::infinity());
  s.best.assign(t.nodes.size(), std::numeric_limits<T>::infinity());
  s.cand.resize(t.nodes.size());
  for (size_t i = 0; i < t.nodes.size(); ++i) s.cand[i] = t.nodes[i].min_id;
}

// Sense-reversing spin barrier for a fixed team of threads (one per std::thread below). A pick of a
// large cloud takes tens of microseconds, so spinning (then yielding, on a busy machine) costs less
// than sleeping on a futex.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait(int& local_sense) {
    local_sense = 1 - local_sense;
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      sense_.store(local_sense, std::memory_order_release);
      return;
    }
    for (int spin = 0; sense_.load(std::memory_order_acquire) != local_sense; ++spin)
      if (spin > 2048) std::this_thread::yield();
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> sense_{0};
};

// Disjoint subtrees covering the tree ("parts"): the largest part is split into its children
// until there are `want` of them or every part is a leaf.
template <typename T>
std::vector<int32_t> tree_parts(const KdTree<T>& t, size_t want) {
  std::vector<int32_t> parts{0};
  auto size = [&](int32_t node) { return t.nodes[node].end - t.nodes[node].begin; };
  while (parts.size() < want) {
    size_t big = parts.size();
    for (size_t i = 0; i < parts.size(); ++i)
      if (t.nodes[parts[i]].right >= 0 && (big == parts.size() || size(parts[i]) > size(parts[big]))) big = i;
    if (big == parts.size()) break;  // only leaves left
    const int32_t node = parts[big];
    parts[big] = node + 1;
    parts.push_back(t.nodes[node].right);
  }
  return parts;
}

// One cloud's FPS on a team of `team` threads: the tree is cut into parts (a few per thread,
// dealt out by size), each thread folds every pick into its own parts, and after one barrier
// every thread takes the next pick from the parts' maxima with the serial combine's rule
// (fps_first). The parts' (maximum, index) pairs are
// distinct, so that rule has one answer in any order, the one fps_tree_update gives at the root:
// the picks are the serial path's. The pairs are double-buffered by pick parity, so a thread
// that runs ahead into the next pick never overwrites what a slower one is still reading.
template <typename T>
void fps_tree_team(const KdTree<T>& t, FpsTreeState<T>& s, const T* xyz, int64_t npoint, int team, int64_t* o) {
  const std::vector<int32_t> parts = tree_parts(t, static_cast<size_t>(team) * 8);
  team = std::min<int>(team, static_cast<int>(parts.size()));
  std::vector<int32_t> order(parts.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  auto size = [&](int32_t f) { return t.nodes[parts[f]].end - t.nodes[parts[f]].begin; };
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return size(a) > size(b); });
  std::vector<std::vector<int32_t>> own(team);
  std::vector<int64_t> load(team, 0);
  for (int32_t f : order) {  // largest part first, to the least loaded thread
    const int w = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    own[w].push_back(f);
    load[w] += size(f);
  }
  std::vector<T> best[2] = {std::vector<T>(parts.size()), std::vector<T>(parts.size())};
  std::vector<int32_t> cand[2] = {std::vector<int32_t>(parts.size()), std::vector<int32_t>(parts.size())};
  SpinBarrier barrier(team);
  o[0] = 0;
  auto work = [&](int w) {
    int sense = 0;
    int64_t last = 0;
    for (int64_t i = 1; i < npoint; ++i) {
      const int par = static_cast<int>(i & 1);
      const T cx = xyz[3 * last], cy = xyz[3 * last + 1], cz = xyz[3 * last + 2];
      for (int32_t f : own[w]) {
        fps_tree_update(t, s, parts[f], cx, cy, cz);
        best[par][f] = s.best[parts[f]];
        cand[par][f] = s.cand[parts[f]];
      }
      barrier.wait(sense);
      T bb = best[par][0];
      int32_t bc = cand[par][0];
      for (size_t f = 1; f < parts.size(); ++f) {
        if (fps_first(best[par][f], cand[par][f], bb, bc)) {
          bb = best[par][f];
          bc = cand[par][f];
        }
      }
      last = bc;
      if (w == 0) o[i] = last;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(team - 1);
  for (int w = 1; w < team; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& th : pool) th.join();
}

// FPS over a kd-tree of the candidates (points not skipped; skipped ones never enter the maximum,
// so their distances are not needed). Same picks as fps_kernel. team > 1: each cloud in turn on
// a team of that many threads (fps_tree_team; for fewer clouds than threads), else the clouds
// spread over torch's threads, one thread per cloud.
template <typename T>
void fps_tree_kernel(const T* xyz_all, const uint8_t* skip, int64_t B, int64_t N, int64_t npoint, int64_t leaf,
                     int64_t team, int64_t* out) {
  auto one = [&](KdTree<T>& t, FpsTreeState<T>& s, int64_t b, int64_t threads) {
    const T* xyz = xyz_all + b * 3 * N;
    int64_t* o = out + b * npoint;
    build_tree(t, xyz, skip ? skip + b * N : nullptr, N, leaf);
    if (t.nodes.empty()) {  // no candidate at all: every pick is index 0, as in pointnet2_ops
      std::fill(o, o + npoint, int64_t(0));
      return;
    }
    fps_tree_reset(t, s);
    if (threads > 1 && npoint > 1) {
      fps_tree_team(t, s, xyz, npoint, static_cast<int>(threads), o);
      return;
    }
    int64_t last = 0;
    o[0] = 0;
    for (int64_t i = 1; i < npoint; ++i) {
      fps_tree_update(t, s, 0, xyz[3 * last], xyz[3 * last + 1], xyz[3 * last + 2]);
      last = s.cand[0];
      o[i] = last;
    }
  };
  if (team > 1) {
    KdTree<T> t;
    FpsTreeState<T> s;
    for (int64_t b = 0; b < B; ++b) one(t, s, b, team);
    return;
  }
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    KdTree<T> t;
    FpsTreeState<T> s;
    for (int64_t b = b0; b < b1; ++b) one(t, s, b, 1);
  });
}

template <typename T>
void build_trees(std::vector<KdTree<T>>& trees, const T* xyz, int64_t B, int64_t N, int64_t leaf) {
  trees.resize(B);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) build_tree(trees[b], xyz + b * 3 * N, nullptr, N, leaf);
  });
}

// The queries q [B, S, 3] as flat indices b * S + s, each cloud's in Morton order of their
// coordinates: consecutive queries then search the same buckets, which stay in cache. Only the
// order in which queries are answered changes; every answer is its query's own. (Ball query only:
// it took 20-30 % off the room and planes cases; kNN's time did not move.)
template <typename T>
std::vector<int64_t> query_order(const T* q, int64_t B, int64_t S) {
  std::vector<int64_t> out(B * S);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<KeyedId> order;
    for (int64_t b = b0; b < b1; ++b) {
      morton_order(q + b * S * 3, nullptr, S, order);
      for (int64_t i = 0; i < S; ++i) out[b * S + i] = b * S + order[i].id;
    }
  });
  return out;
}

// Ball query: the nsample lowest indices >= `from` with d^2 < r2, kept in a max-heap. A subtree
// is skipped when LB >= r2 (no hit inside) or, once the heap is full, when its lowest index
// exceeds the largest index kept (no hit inside could displace one).
template <typename T>
void ball_tree_visit(const KdTree<T>& t, int32_t node, T cx, T cy, T cz, T r2, int64_t nsample, int32_t from,
                     std::vector<int32_t>& heap) {
  const KdNode<T>& n = t.nodes[node];
  const bool full = static_cast<int64_t>(heap.size()) == nsample;
  if (full && n.min_id >= heap.front()) return;
  if (!(box_lower_bound(n, cx, cy, cz) < r2)) return;
  if (n.right >= 0) {
    ball_tree_visit(t, node + 1, cx, cy, cz, r2, nsample, from, heap);
    ball_tree_visit(t, n.right, cx, cy, cz, r2, nsample, from, heap);
    return;
  }
  // distances of the whole bucket first (vectorised, the brute force's expression), then the hits
  T d2[kBlock];
  const int32_t len = n.end - n.begin;
  sqdist_block(t.x.data() + n.begin, t.y.data() + n.begin, t.z.data() + n.begin, cx, cy, cz, len, d2);
  int hits = 0;
  for (int32_t j = 0; j < len; ++j) hits += d2[j] < r2;
  if (!hits) return;
  for (int32_t j = 0; j < len; ++j) {
    if (!(d2[j] < r2)) continue;
    const int32_t id = t.id[n.begin + j];
    if (id < from) continue;
    if (static_cast<int64_t>(heap.size()) < nsample) {
      heap.push_back(id);
      std::push_heap(heap.begin(), heap.end());
    } else if (id < heap.front()) {
      std::pop_heap(heap.begin(), heap.end());
      heap.back() = id;
      std::push_heap(heap.begin(), heap.end());
    }
  }
}

// Points of a ball query scanned in index order before the tree is asked (kBallPrefix), and how
// far the index-order scan may be expected to run before the tree is preferred (kBallScanReach):
// with h >= 2 hits among the first kBallPrefix points the nsample-th hit is expected near index
// nsample * kBallPrefix / h. Dense neighbourhoods (an object, a cluster inside the radius) end
// within a few hundred indices in index order, while the tree would have to visit every bucket
// of the ball to be sure of the lowest indices; sparse ones are the tree's.
constexpr int64_t kBallPrefix = 256;
constexpr int64_t kBallScanReach = 4096;

template <typename T>
void ball_query_tree_kernel(const T* xyz, const T* planes, const T* q, int64_t B, int64_t N, int64_t S, T r2,
                            int64_t nsample, int64_t leaf, int64_t prefix_len, int64_t* out) {
  std::vector<KdTree<T>> trees;
  build_trees(trees, xyz, B, N, leaf);
  const std::vector<int64_t> order = query_order(q, B, S);
  const int64_t prefix = std::min(N, prefix_len < 0 ? kBallPrefix : prefix_len);
  at::parallel_for(0, B * S, grain(64 * leaf), [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> heap;
    heap.reserve(nsample);
    for (int64_t r = i0; r < i1; ++r) {
      const int64_t i = order[r];
      const int64_t b = i / S;
      const T* x = planes + b * 3 * N;
      const T* c = q + i * 3;
      int64_t* o = out + i * nsample;
      // index order first, as the brute force scans: its hits are the brute force's
      int64_t cnt = 0, j = 0;
      ball_scan(x, x + N, x + 2 * N, c, r2, nsample, prefix, j, o, cnt);
      if (cnt < nsample && j < N) {
        if (cnt >= 2 && nsample * prefix <= cnt * std::max(kBallScanReach, prefix)) {
          ball_scan(x, x + N, x + 2 * N, c, r2, nsample, N, j, o, cnt);  // dense: on in index order
        } else {  // sparse: the tree, for the indices past the prefix, on top of the prefix's hits
          heap.assign(o, o + cnt);
          std::make_heap(heap.begin(), heap.end());
          ball_tree_visit(trees[b], 0, c[0], c[1], c[2], r2, nsample, static_cast<int32_t>(prefix), heap);
          std::sort_heap(heap.begin(), heap.end());  // ascending
          cnt = static_cast<int64_t>(heap.size());
          std::copy(heap.begin(), heap.end(), o);
        }
      }
      ball_fill(o, cnt, nsample);
    }
  });
}

// kNN: the k smallest (distance, index) pairs, the brute force's order. The list is kept sorted
// by that pair; a subtree is skipped once the list is full and (LB, its lowest index) is not
// below the k-th pair, since no point inside can then come before it. Two lists hold the pairs:
// PairList, a distance array and an index array (any T), and PackedList for float32, where each
// pair is one uint64 (bits(d) << 32 | index: a non-negative float's bits order like the float, so
// the key orders like the pair, and a compare-and-shift moves one integer instead of two values;
// squared distances are >= +0 for finite inputs, an overflow to inf still orders, indices < 2^31).
template <typename T>
struct PairList {
  T* bd;
  int64_t* bi;
  int64_t k;
  int64_t filled = 0;
  T bound() const { return bd[k - 1]; }
  bool before(T d, int64_t id, int64_t m) const { return d < bd[m] || (d == bd[m] && id < bi[m]); }
  bool before_last(T d, int64_t id) const { return before(d, id, k - 1); }
  void insert(T d, int64_t id) {
    if (filled == k && !before_last(d, id)) return;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && before(d, id, pos - 1)) {
      bd[pos] = bd[pos - 1];
      bi[pos] = bi[pos - 1];
      --pos;
    }
    bd[pos] = d;
    bi[pos] = id;
  }
};

struct PackedList {
  uint64_t* keys;
  int64_t k;
  int64_t filled = 0;
  static uint64_t pack(float d, int64_t id) {
    uint32_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    return (uint64_t(bits) << 32) | uint64_t(uint32_t(id));
  }
  static float distance(uint64_t key) {
    const uint32_t bits = uint32_t(key >> 32);
    float d;
    std::memcpy(&d, &bits, sizeof(d));
    return d;
  }
  float bound() const { return distance(keys[k - 1]); }
  bool before_last(float d, int64_t id) const { return pack(d, id) < keys[k - 1]; }
  void insert(float d, int64_t id) {
    const uint64_t key = pack(d, id);
    if (filled == k && !(key < keys[k - 1])) return;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && key < keys[pos - 1]) {
      keys[pos] = keys[pos - 1];
      --pos;
    }
    keys[pos] = key;
  }
};

template <typename T, typename List>
void knn_tree_visit(const KdTree<T>& t, int32_t node, const T* c, List& list) {
  const KdNode<T>& n = t.nodes[node];
  if (n.right >= 0) {
    const int32_t l = node + 1, r = n.right;
    const T lb_l = box_lower_bound(t.nodes[l], c[0], c[1], c[2]);
    const T lb_r = box_lower_bound(t.nodes[r], c[0], c[1], c[2]);
    const int32_t first = lb_r < lb_l ? r : l, second = first == l ? r : l;
    const T lb_first = first == l ? lb_l : lb_r, lb_second = first == l ? lb_r : lb_l;
    for (int pass = 0; pass < 2; ++pass) {
      const int32_t child = pass ? second : first;
      const T lb = pass ? lb_second : lb_first;
      if (list.filled == list.k && !list.before_last(lb, t.nodes[child].min_id)) continue;
      knn_tree_visit(t, child, c, list);
    }
    return;
  }
  T d2[kBlock];
  const int32_t len = n.end - n.begin;
  sqdist_block(t.x.data() + n.begin, t.y.data() + n.begin, t.z.data() + n.begin, c[0], c[1], c[2], len, d2);
  // the bucket's points that can reach the list, as a bit mask (a bucket holds at most kBlock = 64):
  // the loop below then touches only those, without a mispredicted branch per point
  uint64_t mask = len == 64 ? ~uint64_t(0) : (uint64_t(1) << len) - 1;
  if (list.filled == list.k) {
    mask = le_mask(d2, len, list.bound());
    if (!mask) return;
  }
  while (mask) {
    const int32_t j = __builtin_ctzll(mask);
    mask &= mask - 1;
    list.insert(d2[j], t.id[n.begin + j]);
  }
}

template <typename T>
void knn_tree_kernel(const T* xyz, const T* q, int64_t B, int64_t N, int64_t S, int64_t k, int64_t leaf,
                     T* dist, int64_t* idx) {
  std::vector<KdTree<T>> trees;
  build_trees(trees, xyz, B, N, leaf);
  at::parallel_for(0, B * S, grain(64 * leaf), [&](int64_t i0, int64_t i1) {
    if constexpr (std::is_same_v<T, float>) {
      std::vector<uint64_t> keys(k);
      for (int64_t i = i0; i < i1; ++i) {
        PackedList list{keys.data(), k};
        knn_tree_visit(trees[i / S], 0, q + i * 3, list);
        for (int64_t m = 0; m < k; ++m) {
          dist[i * k + m] = PackedList::distance(keys[m]);
          idx[i * k + m] = int64_t(uint32_t(keys[m]));
        }
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        PairList<T> list{dist + i * k, idx + i * k, k};
        knn_tree_visit(trees[i / S], 0, q + i * 3, list);
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

void check_leaf(int64_t leaf, int64_t N) {
  TORCH_CHECK(leaf <= 0 || N <= std::numeric_limits<int32_t>::max(), "the kd-tree path takes N < 2^31 points");
}

}  // namespace

// skip: uint8 [B, N] (1 = never picked after the first) or an empty tensor for none.
// leaf: 0 for the brute-force scan, > 0 for a kd-tree with at most `leaf` points per bucket.
// team (kd-tree path): > 1 runs each cloud on that many threads (fps_tree_team), else one thread per cloud.
at::Tensor furthest_point_sample(const at::Tensor& xyz, int64_t npoint, const at::Tensor& skip, int64_t leaf,
                                 int64_t team) {
  check(xyz, "xyz");
  const auto B = xyz.size(0), N = xyz.size(1);
  check_leaf(leaf, N);
  TORCH_CHECK(npoint >= 1 && npoint <= N, "npoint out of range");
  TORCH_CHECK(team >= 0 && team <= 1024, "team must be in [0, 1024]");
  const bool has_skip = skip.numel() > 0;
  TORCH_CHECK(!has_skip || (skip.scalar_type() == at::kByte && skip.dim() == 2 && skip.size(0) == B &&
                            skip.size(1) == N), "skip must be uint8 [B, N] or empty");
  auto out = at::empty({B, npoint}, xyz.options().dtype(at::kLong));
  auto p = leaf > 0 ? xyz.contiguous() : planar(xyz);  // the tree reads rows, the scan planes
  auto sk = has_skip ? skip.contiguous() : skip;
  const uint8_t* sp = has_skip ? sk.data_ptr<uint8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "furthest_point_sample", [&] {
    if (leaf > 0)
      fps_tree_kernel<scalar_t>(p.data_ptr<scalar_t>(), sp, B, N, npoint, leaf, team, out.data_ptr<int64_t>());
    else
      fps_kernel<scalar_t>(p.data_ptr<scalar_t>(), sp, B, N, npoint, out.data_ptr<int64_t>());
  });
  return out;
}

// prefix (kd-tree path): points scanned in index order before the tree (< 0: kBallPrefix; 0: tree only).
at::Tensor ball_query(const at::Tensor& xyz, const at::Tensor& new_xyz, double r2, int64_t nsample, int64_t leaf,
                      int64_t prefix) {
  check(xyz, "xyz");
  check(new_xyz, "new_xyz");
  const auto B = xyz.size(0), N = xyz.size(1), S = new_xyz.size(1);
  check_leaf(leaf, N);
  TORCH_CHECK(leaf <= kBlock, "ball query buckets hold at most ", kBlock, " points");
  auto out = at::empty({B, S, nsample}, xyz.options().dtype(at::kLong));
  auto planes = planar(xyz);  // the index-order scans read planes; the tree reads rows
  auto q = new_xyz.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "ball_query", [&] {
    if (leaf > 0) {
      auto rows = xyz.contiguous();
      ball_query_tree_kernel<scalar_t>(rows.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                       B, N, S, static_cast<scalar_t>(r2), nsample, leaf, prefix,
                                       out.data_ptr<int64_t>());
    } else {
      ball_query_kernel<scalar_t>(planes.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, N, S,
                                  static_cast<scalar_t>(r2), nsample, out.data_ptr<int64_t>());
    }
  });
  return out;
}

std::vector<at::Tensor> knn(const at::Tensor& query, const at::Tensor& support, int64_t k, int64_t leaf) {
  check(query, "query");
  check(support, "support");
  const auto B = support.size(0), N = support.size(1), S = query.size(1);
  check_leaf(leaf, N);
  TORCH_CHECK(leaf <= kBlock, "kNN buckets hold at most ", kBlock, " points");
  TORCH_CHECK(k >= 1 && k <= N, "k out of range");
  auto dist = at::empty({B, S, k}, query.options());
  auto idx = at::empty({B, S, k}, query.options().dtype(at::kLong));
  auto p = leaf > 0 ? support.contiguous() : planar(support);
  auto q = query.contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn", [&] {
    if (leaf > 0)
      knn_tree_kernel<scalar_t>(p.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, N, S, k, leaf,
                                dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
    else
      knn_kernel<scalar_t>(p.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, N, S, k,
                           dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
  });
  return {dist, idx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("furthest_point_sample", &furthest_point_sample,
        "FPS [B,N,3] (+ skip mask, leaf: 0 brute force, >0 kd-tree bucket size, team: threads per cloud) "
        "-> int64 [B,npoint]");
  m.def("ball_query", &ball_query,
        "ball query with squared radius r2 (+ leaf, prefix scanned in index order) -> int64 [B,S,nsample]");
  m.def("knn", &knn, "k nearest neighbours (+ leaf) -> (sqdist [B,S,k], int64 idx [B,S,k])");
}
