# Emulates variant 9's SPREAD layout (src/backend/cuda/qgemv_simt.cuh): the staging of x with its swizzle, the
# chunk sums and a row's dot, in float64 (index arithmetic: the session 23 bug and its fix) and in f32 (the layout's
# rounding against the default layout's). Usage: python3 bench/emulate_simt_spread.py
import numpy as np
rng = np.random.default_rng(1)
K = 4096; C = K // 32; GS = 64
E = 0x04837048
e = [(E >> (4 * k)) & 0xF for k in range(8)]
p = [19 - v for v in e]
assert p == [11, 15, 19, 12, 16, 11, 15, 19]
x = rng.standard_normal(K)
words = rng.integers(0, 2**32, size=K // 8, dtype=np.uint64)
scale = rng.uniform(0.01, 0.1, K // GS); bias = rng.uniform(-1, 1, K // GS)
def x_unit(c, u): return c * 8 + (u ^ (c & 7))
xs = np.zeros(K)
for i in range(K // 8):
    c, u = i // 4, (i % 4) * 2
    f = x[8 * i:8 * i + 8] * np.array([2.0 ** v for v in e])
    xs[x_unit(c, u) * 4:x_unit(c, u) * 4 + 4] = f[:4]
    xs[x_unit(c, u + 1) * 4:x_unit(c, u + 1) * 4 + 4] = f[4:]
for fixed in (False, True):
    sx = np.zeros(C); sxs = np.zeros(C)
    for c in range(C):
        tid = (c * 37) % 256
        for i in range(32):
            at = (i + tid) & 31
            v = xs[c * 32 + at]
            k = (at & 7) ^ ((c & 1) << 2) if fixed else (at & 7)
            sx[c] += v * 2.0 ** -e[k]; sxs[c] += v
    y = 0.0
    for c in range(C):
        a = 0.0
        for j in range(4):
            xv = np.concatenate([xs[x_unit(c, 2 * j) * 4:x_unit(c, 2 * j) * 4 + 4], xs[x_unit(c, 2 * j + 1) * 4:x_unit(c, 2 * j + 1) * 4 + 4]])
            w = int(words[c * 4 + j])
            lo, hi = (w << 11) & 0xFFFFFFFF, w >> 9
            src = [lo, lo, lo, w, w, hi, hi, hi]
            for k in range(8):
                q = (src[k] >> p[k]) & 0xF
                a += (1 + q * 2.0 ** (p[k] - 23)) * xv[k]
        g = c * 32 // GS
        y += 16 * scale[g] * (a - sxs[c]) + bias[g] * sx[c]
    ref = 0.0
    for kk in range(K):
        q = (int(words[kk // 8]) >> (4 * (kk % 8))) & 0xF
        ref += (scale[kk // GS] * q + bias[kk // GS]) * x[kk]
    print("fixed" if fixed else "as run", "y", y, "ref", ref, "rel", abs(y - ref) / abs(ref))

# f32 error of the two layouts (products and sums rounded to f32 in the kernel's order; FMA as one rounding)
f32 = np.float32
def run32(spread):
    y = f32(0)
    for c in range(C):
        xc = x[c * 32:(c + 1) * 32].astype(f32)
        sc_ = f32(0)
        for v in xc: sc_ = f32(sc_ + v)
        if spread:
            xsc = np.array([xc[i] * f32(2.0 ** e[i % 8]) for i in range(32)], dtype=f32)
            ss = f32(0)
            for v in xsc: ss = f32(ss + v)
        a = []
        for j in range(4):
            w = int(words[c * 4 + j]); s = f32(0)
            for k in range(8):
                q = (w >> (4 * k)) & 0xF
                code = f32(1 + q * 2.0 ** (p[k] - 23)) if spread else f32(1 + q / 16)
                xv = xsc[8 * j + k] if spread else xc[8 * j + k]
                s = f32(np.float64(code) * np.float64(xv) + np.float64(s))  # fma: one rounding
            a.append(s)
        tot = f32(f32(a[0] + a[1]) + f32(a[2] + a[3]))
        d = f32(tot - (ss if spread else sc_))
        g = c * 32 // GS
        y = f32(np.float64(f32(16 * scale[g])) * np.float64(d) + np.float64(f32(np.float64(f32(bias[g])) * np.float64(sc_) + np.float64(y))))
    return y
ref32 = 0.0
for kk in range(K):
    q = (int(words[kk // 8]) >> (4 * (kk % 8))) & 0xF
    ref32 += (float(f32(scale[kk // GS])) * q + float(f32(bias[kk // GS]))) * float(f32(x[kk]))
for sp in (False, True):
    y = run32(sp); print("spread" if sp else "plain ", "f32 y", y, "rel err", abs(float(y) - ref32) / abs(ref32))
