# Off-GPU check of PrefillKernel's control flow at tile level (work items, GQA packing, KV
# range, tile masks, online softmax, empty rows, qo_len > kv_len, windows) vs naive attention.
import numpy as np, math
rng=np.random.default_rng(1)
def naive(q,k,v,qo_len,kv_len,causal,wl,scale):
    # q [qo,Hq,D], k,v [kv,Hkv,D]
    Hq=q.shape[1]; Hkv=k.shape[1]; g=Hq//Hkv
    o=np.zeros_like(q); lse=np.full((qo_len,Hq),-np.inf)
    for i in range(qo_len):
        p=kv_len-qo_len+i
        for h in range(Hq):
            vis=[t for t in range(kv_len) if (not causal or t<=p) and (wl<0 or t>=p-wl)]
            if not vis: continue
            s=np.array([q[i,h]@k[t,h//g]*scale for t in vis])
            m=s.max(); e=np.exp(s-m); o[i,h]=(e[:,None]*v[vis,h//g]).sum(0)/e.sum(); lse[i,h]=m+math.log(e.sum())
    return o,lse
def kernel(q,k,v,qo_len,kv_len,causal,wl,scale,CTA_M,N):
    Hq=q.shape[1]; Hkv=k.shape[1]; group=Hq//Hkv; D=q.shape[2]
    o=np.full_like(q,np.nan); lse=np.full((qo_len,Hq),np.nan)
    items=[ps for ps in range(0,qo_len*group,CTA_M)]
    log2e=1/math.log(2)
    for kvh in range(Hkv):
      for packed_start in items:
        packed_end=min(packed_start+CTA_M,qo_len*group)
        q_lo=packed_start//group; q_hi=(packed_end-1)//group; delta=kv_len-qo_len
        kv_begin=0; kv_end=kv_len
        if causal: kv_end=min(kv_len,delta+q_hi+1)
        if wl>=0: kv_begin=max(0,delta+q_lo-wl)
        rows=list(range(CTA_M))
        Q=np.zeros((CTA_M,D))
        for r in rows:
            pk=packed_start+r
            if pk<packed_end: Q[r]=q[pk//group, kvh*group+pk%group]
        m=np.full(CTA_M,-np.inf); d=np.zeros(CTA_M); O=np.zeros((CTA_M,D))
        num_tiles=(kv_end-kv_begin+N-1)//N if kv_end>kv_begin else 0
        qpos_lo=delta+q_lo; qpos_hi=delta+q_hi
        for tile in range(num_tiles):
            t0=kv_begin+tile*N
            K=np.zeros((N,D)); V=np.zeros((N,D))
            for r in range(N):
                pos=t0+r
                if pos<kv_end: K[r]=k[pos,kvh]; V[r]=v[pos,kvh]
            S=Q@K.T*scale*log2e
            needs=(t0+N>kv_end) or (causal and t0+N-1>qpos_lo) or (wl>=0 and t0<qpos_hi-wl)
            if needs:
                for r in rows:
                    pk=min(packed_start+r,packed_end-1); qpos=delta+pk//group
                    lo=qpos-wl if wl>=0 else -2**31; hi=min(qpos,kv_end-1) if causal else kv_end-1
                    for c in range(N):
                        pos=t0+c
                        if pos<lo or pos>hi: S[r,c]=-np.inf
            else:
                # check that no masking was actually needed for valid rows
                for r in rows:
                    pk=packed_start+r
                    if pk>=packed_end: continue
                    qpos=delta+pk//group
                    for c in range(N):
                        pos=t0+c
                        assert pos<kv_end and (not causal or pos<=qpos) and (wl<0 or pos>=qpos-wl), "unmasked invisible"
            mx=np.maximum(m,S.max(1))
            base=np.where(mx==-np.inf,0,mx)
            sc=np.exp2(m-base); m=mx
            P=np.exp2(S-base[:,None])
            d=d*sc+P.sum(1); O=O*sc[:,None]+P@V
        for r in rows:
            pk=packed_start+r
            if pk>=packed_end: continue
            qi=pk//group; h=kvh*group+pk%group
            o[qi,h]=O[r]/d[r] if d[r]>0 else 0
            lse[qi,h]=(m[r]+math.log2(d[r]))*math.log(2) if d[r]>0 else -np.inf
    return o,lse
worst=0
for trial in range(60):
    D=8; Hkv=rng.integers(1,3); g=int(rng.choice([1,2,4])); Hq=Hkv*g
    kv_len=int(rng.integers(0,90)); qo_len=int(rng.integers(1,kv_len+8)) if rng.random()<0.2 else int(rng.integers(1,max(kv_len,1)+1))
    causal=bool(rng.random()<0.7); wl=int(rng.integers(0,30)) if rng.random()<0.4 else -1
    CTA_M=int(rng.choice([16,32])); N=int(rng.choice([8,16]))
    q=rng.standard_normal((qo_len,Hq,D)); k=rng.standard_normal((max(kv_len,1),Hkv,D)); v=rng.standard_normal((max(kv_len,1),Hkv,D))
    o1,l1=naive(q,k,v,qo_len,kv_len,causal,wl,0.3)
    o2,l2=kernel(q,k,v,qo_len,kv_len,causal,wl,0.3,CTA_M,N)
    assert not np.isnan(o2).any() and not np.isnan(l2).any(), (trial,)
    assert np.array_equal(np.isinf(l1),np.isinf(l2)), (trial, kv_len, qo_len, causal, wl)
    fin=np.isfinite(l1)
    e=max(np.abs(o1-o2).max(), np.abs(l1[fin]-l2[fin]).max() if fin.any() else 0)
    worst=max(worst,e)
print("worst",worst)
