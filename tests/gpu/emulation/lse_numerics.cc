// Host-only emulation (no GPU) of the LSE numerics of the attnd CUDA attention kernels with RoPE
// on the fly and a soft cap, against a float64 reference: where the LSE error of the kernels
// before NUMERICS.md's fix came from, and what the fix leaves. Each variant reproduces a kernel's
// rounding points (16-bit storage of rotated q/k, float RoPE angles, fp32 dot products, base-2
// softmax with LSE = (m + log2 d) ln 2).
//   g++ -O2 -o /tmp/lse_numerics tests/gpu/emulation/lse_numerics.cc
//   /tmp/lse_numerics [--f16] [--n=KEYS] [--qstd=Q_STD] [--cap=CAP] [--off=ROPE_OFFSET]
//                     [--theta=THETA] [--D=HEAD_DIM] [--rows=ROWS]
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
#include <string>

static float RoundBf16(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  uint32_t lsb = (u >> 16) & 1; u += 0x7fff + lsb; u &= 0xffff0000u;
  float r; std::memcpy(&r, &u, 4); return r;
}
static float RoundF16(float f) {  // via frexp: 11 significant bits (no subnormals, no overflow)
  if (f == 0) return 0;
  int e;
  const double m = std::frexp(static_cast<double>(f), &e);
  return static_cast<float>(std::ldexp(std::nearbyint(std::ldexp(m, 11)), e - 11));
}
static bool g_bf16 = true;
static float R(float x) { return g_bf16 ? RoundBf16(x) : RoundF16(x); }

struct Cfg { int D = 128; int n = 1000; float q_std = 1; float cap = 0; int offset = 0;
             float theta = 1e4f; float rope_scale = 1; bool rope = true; };

// float64 rope
static void RopeD(const std::vector<double>& x, double pos, const Cfg& c, std::vector<double>& out) {
  int h = c.D / 2; out.resize(c.D);
  for (int i = 0; i < h; ++i) {
    double f = std::pow((double)c.theta, -2.0 * i / c.D); double a = pos / c.rope_scale * f;
    double cs = std::cos(a), sn = std::sin(a);
    out[i] = x[i] * cs - x[i + h] * sn; out[i + h] = x[i + h] * cs + x[i] * sn;
  }
}
// angle modes: 0 exact (double), 1 prefill float
static void RopeF(const std::vector<float>& x, int pos, const Cfg& c, int mode, bool round, std::vector<float>& out) {
  int h = c.D / 2; out.resize(c.D);
  float log2t = std::log2(c.theta); float rcp = 1.f / c.rope_scale;
  for (int i = 0; i < h; ++i) {
    float cs, sn;
    if (mode == 0) {
      double f = std::pow((double)c.theta, -2.0 * i / c.D) / c.rope_scale; double a = pos * f;
      cs = (float)std::cos(a); sn = (float)std::sin(a);
    } else {
      float sp = (float)pos * rcp;
      float e = -log2t * (2.f * i / c.D);
      float inv = std::exp2(e);  // exp2f ~ correctly rounded
      float angle = sp * inv;
      float k = std::nearbyint(angle * 0.15915494309189535f);
      float r = std::fma(-k, 6.28125f, angle);
      r = std::fma(-k, 1.9353071795864769e-3f, r);
      sn = std::sin(r); cs = std::cos(r);
    }
    float a = x[i], b = x[i + h];
    float lo = a * cs - b * sn, hi = b * cs + a * sn;
    out[i] = round ? R(lo) : lo; out[i + h] = round ? R(hi) : hi;
  }
}

int main(int argc, char** argv) {
  Cfg c;
  int rows = 200;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto v = [&](const char* p) { return std::stod(a.substr(strlen(p))); };
    if (a.rfind("--n=", 0) == 0) c.n = (int)v("--n=");
    else if (a.rfind("--qstd=", 0) == 0) c.q_std = v("--qstd=");
    else if (a.rfind("--cap=", 0) == 0) c.cap = v("--cap=");
    else if (a.rfind("--off=", 0) == 0) c.offset = (int)v("--off=");
    else if (a.rfind("--theta=", 0) == 0) c.theta = v("--theta=");
    else if (a.rfind("--D=", 0) == 0) c.D = (int)v("--D=");
    else if (a == "--f16") g_bf16 = false;
    else if (a == "--norope") c.rope = false;
    else if (a.rfind("--rows=", 0) == 0) rows = (int)v("--rows=");
  }
  std::mt19937_64 gen(7); std::normal_distribution<float> nd(0, 1);
  const float scale = 1.f / std::sqrt((float)c.D);
  const float kLog2e = 1.4426950408889634f, kLn2 = 0.69314718055994531f;
  // variants
  const char* names[] = {"cpu reference (f32 rotation)",
                         "old cc decode (q f32, k rounded)",
                         "old tc decode (q, k rounded)",
                         "old prefill (q, k rounded, float angles)",
                         "float angles only (no rounding)",
                         "q, k rounded, lse in ln domain",
                         "new: q, k hi+lo, 3 MMAs (tc, prefill)"};
  const int NV = 7;
  double max_rel[NV] = {0}, max_abs[NV] = {0}, e2[NV] = {0}; double r2 = 0; double lse_min = 1e30, lse_max = -1e30;
  for (int row = 0; row < rows; ++row) {
    std::vector<float> q(c.D); for (auto& x : q) x = R(nd(gen) * c.q_std);
    std::vector<std::vector<float>> K(c.n, std::vector<float>(c.D));
    for (auto& k : K) for (auto& x : k) x = R(nd(gen));
    const int qpos = c.n - 1 + c.offset;
    // reference
    std::vector<double> qd(q.begin(), q.end()), qr, kr;
    if (c.rope) RopeD(qd, qpos, c, qr); else qr = qd;
    std::vector<double> s(c.n); double mx = -1e300;
    for (int t = 0; t < c.n; ++t) {
      std::vector<double> kd(K[t].begin(), K[t].end());
      if (c.rope) RopeD(kd, t + c.offset, c, kr); else kr = kd;
      double dot = 0; for (int i = 0; i < c.D; ++i) dot += qr[i] * kr[i];
      double x = dot * (1.0 / std::sqrt((double)c.D));
      if (c.cap > 0) x = c.cap * std::tanh(x / c.cap);
      s[t] = x; mx = std::max(mx, x);
    }
    double sum = 0; for (double x : s) sum += std::exp(x - mx);
    const double lse_ref = mx + std::log(sum);
    lse_min = std::min(lse_min, lse_ref); lse_max = std::max(lse_max, lse_ref);
    r2 += lse_ref * lse_ref;
    for (int v = 0; v < NV; ++v) {
      std::vector<float> qv, kv;
      int amode = (v == 3 || v == 4) ? 1 : 0;
      bool qround = (v == 2 || v == 3 || v == 5);
      bool kround = (v == 1 || v == 2 || v == 3 || v == 5);
      const bool split = v == 6;
      if (c.rope) RopeF(q, qpos, c, amode, qround, qv); else qv = q;
      std::vector<float> qhi(qv), qlo(c.D, 0.f);
      if (split) for (int i = 0; i < c.D; ++i) { qhi[i] = R(qv[i]); qlo[i] = R(qv[i] - qhi[i]); }
      float qscale = c.cap > 0 ? scale / c.cap : scale * kLog2e;
      if (v == 1) for (auto& x : qv) x *= qscale;  // cc: q prescaled
      float m = -INFINITY, d = 0; std::vector<float> s2(c.n);
      double dsum = 0, mln = -1e300; std::vector<double> sl(c.n);
      for (int t = 0; t < c.n; ++t) {
        if (c.rope) RopeF(K[t], t + c.offset, c, amode, kround, kv); else kv = K[t];
        float acc = 0;
        if (split) {
          for (int i = 0; i < c.D; ++i) {
            const float khi = R(kv[i]), klo = R(kv[i] - khi);
            acc = std::fma(qhi[i], khi, acc);
            acc = std::fma(qlo[i], khi, acc);
            acc = std::fma(qhi[i], klo, acc);
          }
        } else {
          for (int i = 0; i < c.D; ++i) acc = std::fma(qv[i], kv[i], acc);
        }
        float x;
        if (v == 1) x = c.cap > 0 ? c.cap * kLog2e * std::tanh(acc) : acc;
        else x = c.cap > 0 ? c.cap * kLog2e * std::tanh(acc * (scale / c.cap)) : acc * scale * kLog2e;
        s2[t] = x; m = std::max(m, x);
        double xl = c.cap > 0 ? c.cap * std::tanh((double)acc * scale / c.cap) : (double)acc * scale;
        sl[t] = xl; mln = std::max(mln, xl);
      }
      for (int t = 0; t < c.n; ++t) d += std::exp2(s2[t] - m);
      float lse = (m + std::log2(d)) * kLn2;
      if (v == 5) { for (double x : sl) dsum += std::exp(x - mln); lse = (float)(mln + std::log(dsum)); }
      double err = lse - lse_ref;
      e2[v] += err * err; max_abs[v] = std::max(max_abs[v], std::fabs(err));
      max_rel[v] = std::max(max_rel[v], std::fabs(err) / std::max(std::fabs(lse_ref), 1e-30));
    }
  }
  std::printf("%s D%d n%d qstd%.1f cap%.1f off%d theta%.0f rope%d: lse ref in [%.3f, %.3f]\n", g_bf16 ? "bf16" : "f16",
              c.D, c.n, c.q_std, c.cap, c.offset, c.theta, c.rope, lse_min, lse_max);
  for (int v = 0; v < NV; ++v)
    std::printf("  %-44s rel_l2 %.2e  max_rel %.2e  max_abs %.2e\n", names[v], std::sqrt(e2[v] / r2), max_rel[v], max_abs[v]);
}
