#!/usr/bin/env python3
"""Host-only check (no GPU) of the tensor-core decode kernel's data movement: the swizzled shared-memory
layout, the ldmatrix lane addresses and the mma.m16n8k16 fragment layouts of decode_tc_kernel.cuh,
emulated with numpy after the PTX ISA definitions, must reproduce S = Q K^T and O = P V exactly;
the ldmatrix phases must be free of bank conflicts.  python3 tc_fragments.py"""
import numpy as np
rng=np.random.default_rng(0)
for D in (64,128):
    CH=D//8
    def swz(row,chunk): return row*D + ((chunk ^ (row&7))<<3)
    TPS=64
    K=rng.standard_normal((TPS,D)); V=rng.standard_normal((TPS,D)); Q=rng.standard_normal((16,D))
    sk=np.zeros(TPS*D); sv=np.zeros(TPS*D); sq=np.zeros(16*D)
    for t in range(TPS):
        for c in range(CH):
            sk[swz(t,c):swz(t,c)+8]=K[t,c*8:c*8+8]; sv[swz(t,c):swz(t,c)+8]=V[t,c*8:c*8+8]
    for r in range(16):
        for c in range(CH): sq[swz(r,c):swz(r,c)+8]=Q[r,c*8:c*8+8]
    def ldm(mem, addr_of_lane, trans=False):
        # returns regs[lane][j] = (x,y)
        mats=[np.array([mem[addr_of_lane(8*j+i):addr_of_lane(8*j+i)+8] for i in range(8)]) for j in range(4)]
        regs=[[None]*4 for _ in range(32)]
        for T in range(32):
            for j in range(4):
                M=mats[j]
                if not trans: regs[T][j]=(M[T//4][2*(T%4)], M[T//4][2*(T%4)+1])
                else: regs[T][j]=(M[2*(T%4)][T//4], M[2*(T%4)+1][T//4])
        return regs
    def mma(c, a, b0, b1):
        # c[T]=[4], a[T]=[4 pairs], b0[T],b1[T] pairs
        A=np.zeros((16,16)); B=np.zeros((16,8))
        for T in range(32):
            g,cc=T//4,T%4
            A[g,2*cc:2*cc+2]=a[T][0]; A[g+8,2*cc:2*cc+2]=a[T][1]; A[g,2*cc+8:2*cc+10]=a[T][2]; A[g+8,2*cc+8:2*cc+10]=a[T][3]
            B[2*cc:2*cc+2,g]=b0[T]; B[2*cc+8:2*cc+10,g]=b1[T]
        C=A@B
        for T in range(32):
            g,cc=T//4,T%4
            c[T][0]+=C[g,2*cc]; c[T][1]+=C[g,2*cc+1]; c[T][2]+=C[g+8,2*cc]; c[T][3]+=C[g+8,2*cc+1]
    KS=D//16
    qa=[ldm(sq, lambda l,ks=ks: swz((l%8)+((l//8)%2)*8, ks*2+l//16)) for ks in range(KS)]
    for warp in range(4):
        wtok=warp*16
        s=[[ [0.0]*4 for _ in range(32)] for n in range(2)]
        for ks in range(KS):
            kb=ldm(sk, lambda l: swz(wtok+(l%8)+(l//16)*8, ks*2+(l//8)%2))
            mma(s[0], [qa[ks][T] for T in range(32)], [kb[T][0] for T in range(32)], [kb[T][1] for T in range(32)])
            mma(s[1], [qa[ks][T] for T in range(32)], [kb[T][2] for T in range(32)], [kb[T][3] for T in range(32)])
        Sref=Q@K[wtok:wtok+16].T
        S=np.zeros((16,16))
        for T in range(32):
            g,cc=T//4,T%4
            for n in range(2):
                for e in range(4):
                    S[g+8*(e//2), n*8+cc*2+(e&1)]=s[n][T][e]
        assert np.allclose(S,Sref), (D,warp)
        P=rng.standard_normal((16,16))
        pa=[]
        for T in range(32):
            g,cc=T//4,T%4
            pv=[[P[g+8*(e//2), n*8+cc*2+(e&1)] for e in range(4)] for n in range(2)]
            pa.append([(pv[0][0],pv[0][1]),(pv[0][2],pv[0][3]),(pv[1][0],pv[1][1]),(pv[1][2],pv[1][3])])
        o=[[[0.0]*4 for _ in range(32)] for n in range(D//8)]
        for dp in range(D//16):
            vb=ldm(sv, lambda l: swz(wtok+(l%8)+((l//8)%2)*8, dp*2+l//16), trans=True)
            mma(o[2*dp], pa, [vb[T][0] for T in range(32)], [vb[T][1] for T in range(32)])
            mma(o[2*dp+1], pa, [vb[T][2] for T in range(32)], [vb[T][3] for T in range(32)])
        O=np.zeros((16,D))
        for T in range(32):
            g,cc=T//4,T%4
            for n in range(D//8):
                O[g, n*8+cc*2:n*8+cc*2+2]=o[n][T][0:2]; O[g+8, n*8+cc*2:n*8+cc*2+2]=o[n][T][2:4]
        assert np.allclose(O, P@V[wtok:wtok+16]), (D,warp)
    # bank conflict check for ldmatrix: each 8-lane phase -> distinct 16B bank groups
    for ks in range(KS):
        addrs=[swz(wtok+(l%8)+(l//16)*8, ks*2+(l//8)%2)*2 for l in range(32)]
        for j in range(4):
            banks=set((a//16)%8 for a in addrs[8*j:8*j+8]); assert len(banks)==8
print("fragment mappings OK")
