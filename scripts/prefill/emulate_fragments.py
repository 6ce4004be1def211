# Off-GPU check of prefill_kernel.cuh's fragment index math: swizzled smem tiles, ldmatrix(.trans)
# lane addresses, mma.m16n8k16 layouts, P from the S accumulators, O staging. Usage:
#   python3 emulate_fragments.py [D N MQ warp]   (prints max errors; both must be ~1e-13)
import numpy as np
rng=np.random.default_rng(0)
import sys
D, N, MQ, warp = (int(x) for x in sys.argv[1:5]) if len(sys.argv) > 4 else (128, 64, 2, 1)
WR=16*MQ; CTA_M=4*WR
def swz(row,chunk): return row*D + ((chunk ^ (row & 7))<<3)
def store_tile(M):  # M [rows][D] -> flat swizzled
    rows=M.shape[0]; flat=np.zeros(rows*D)
    for r in range(rows):
        for c in range(D//8): flat[swz(r,c):swz(r,c)+8]=M[r,c*8:c*8+8]
    return flat
def ldmatrix(flat, addrs, trans=False):
    # addrs[lane] = element offset of a 16B row; returns regs[lane][4] as pairs
    regs=[[None]*4 for _ in range(32)]
    for m in range(4):
        mat=np.array([flat[addrs[8*m+r]:addrs[8*m+r]+8] for r in range(8)])  # [8 rows][8 cols]
        if trans: mat=mat.T
        for lane in range(32):
            row=lane//4; w=lane%4
            regs[lane][m]=(mat[row,2*w],mat[row,2*w+1])
    return regs
def mma(C, A, B0, B1):
    # A regs per lane (4 pairs), B0/B1 per lane pairs; C per lane 4 floats
    Am=np.zeros((16,16)); Bm=np.zeros((16,8))
    for lane in range(32):
        g=lane//4; t=lane%4
        a=A[lane]
        Am[g,2*t:2*t+2]=a[0]; Am[g+8,2*t:2*t+2]=a[1]; Am[g,2*t+8:2*t+10]=a[2]; Am[g+8,2*t+8:2*t+10]=a[3]
        Bm[2*t:2*t+2,g]=B0[lane]; Bm[2*t+8:2*t+10,g]=B1[lane]
    Cm=Am@Bm
    for lane in range(32):
        g=lane//4; t=lane%4
        C[lane][0]+=Cm[g,2*t]; C[lane][1]+=Cm[g,2*t+1]; C[lane][2]+=Cm[g+8,2*t]; C[lane][3]+=Cm[g+8,2*t+1]
Q=rng.standard_normal((CTA_M,D)); K=rng.standard_normal((N,D)); V=rng.standard_normal((N,D))
qs=store_tile(Q); ks=store_tile(K); vs=store_tile(V)
s=[[[[0.0]*4 for _ in range(32)] for j in range(N//8)] for mq in range(MQ)]
for kk in range(D//16):
    a=[]
    for mq in range(MQ):
        addrs=[swz(warp*WR+mq*16+(l%16), 2*kk+l//16) for l in range(32)]
        a.append(ldmatrix(qs,addrs))
    for nn in range(N//16):
        addrs=[swz(nn*16+(l%8)+(l//16)*8, 2*kk+(l//8)%2) for l in range(32)]
        bk=ldmatrix(ks,addrs)
        for mq in range(MQ):
            mma(s[mq][2*nn], a[mq], [bk[l][0] for l in range(32)], [bk[l][1] for l in range(32)])
            mma(s[mq][2*nn+1], a[mq], [bk[l][2] for l in range(32)], [bk[l][3] for l in range(32)])
# check S
Sref=Q[warp*WR:(warp+1)*WR]@K.T
err=0
for mq in range(MQ):
  for j in range(N//8):
    for lane in range(32):
      g=lane//4;t=lane%4
      for e in range(4):
        r=mq*16+g+8*(e>>1); c=j*8+2*t+(e&1)
        err=max(err,abs(s[mq][j][lane][e]-Sref[r,c]))
print("S err",err)
# P = S (no softmax, just check PV mapping)
o=[[[0.0]*4 for _ in range(32)] for mq in range(MQ) for j in range(D//8)]
o=[[[ [0.0]*4 for _ in range(32)] for j in range(D//8)] for mq in range(MQ)]
for nn in range(N//16):
    pa=[]
    for mq in range(MQ):
        pa.append([ (tuple(s[mq][2*nn][l][0:2]), tuple(s[mq][2*nn][l][2:4]), tuple(s[mq][2*nn+1][l][0:2]), tuple(s[mq][2*nn+1][l][2:4])) for l in range(32)])
    for dd in range(D//16):
        addrs=[swz(nn*16+(l%8)+((l//8)%2)*8, 2*dd+l//16) for l in range(32)]
        bv=ldmatrix(vs,addrs,trans=True)
        for mq in range(MQ):
            mma(o[mq][2*dd], pa[mq], [bv[l][0] for l in range(32)], [bv[l][1] for l in range(32)])
            mma(o[mq][2*dd+1], pa[mq], [bv[l][2] for l in range(32)], [bv[l][3] for l in range(32)])
Oref=Sref@V
# stage O via swizzled smem as the kernel does, then read back rows
stage=np.full(CTA_M*D, np.nan)
for mq in range(MQ):
  for h in range(2):
    for lane in range(32):
      g=lane//4;t=lane%4; r=warp*WR+mq*16+g+8*h
      for j in range(D//8):
        off=swz(r,j)+2*t
        stage[off]=o[mq][j][lane][2*h]; stage[off+1]=o[mq][j][lane][2*h+1]
err=0
for rl in range(WR):
  r=warp*WR+rl
  row=np.concatenate([stage[swz(r,c):swz(r,c)+8] for c in range(D//8)])
  err=max(err,np.abs(row-Oref[rl]).max())
print("O err",err)
