#!/usr/bin/env python3
"""Host-only check (no GPU) of the CUDA-core decode kernel's algorithm: decode_kernel.cuh per CTA with its
own index formulas (pipeline stages, page lookups, windows, RoPE, soft cap, merge across tz) plus
the PrepareDecode split-KV schedule and the merge kernel, against a naive float64 attention.
  python3 cc_algorithm.py"""
import numpy as np, math
rng=np.random.default_rng(1)
LOG2E=1.4426950408889634; LN2=0.6931471805599453

def traits(D,TILE):
    BDX=D//8; BDY=TILE; BDZ=1 if BDX*BDY>=128 else 128//(BDX*BDY); NT=BDX*BDY*BDZ
    TT=8192//(4*D); TZ=max(1,TT//BDZ); TPS=TZ*BDZ
    return BDX,BDY,BDZ,NT,TZ,TPS

def schedule(kv_len, head_ctas, page_size, target, fixed=0, min_chunk=256):
    max_len=max(kv_len); chunk=0
    if fixed>0: chunk=fixed
    elif len(kv_len)*head_ctas < target:
        g=max(16,page_size); lo=max(g,(min_chunk+g-1)//g*g); hi=max(lo,(max_len+g-1)//g*g)
        a,z=lo//g,hi//g
        cnt=lambda c: sum(max(1,(l+c-1)//c) for l in kv_len)
        while a<z:
            mid=(a+z)//2
            if cnt(mid*g)*head_ctas<=target: z=mid
            else: a=mid+1
        chunk=a*g
        if chunk>=max_len: chunk=0
    items=[];indptr=[0];split=False
    for b,l in enumerate(kv_len):
        if chunk==0 or l<=chunk: items.append((b,0,l,0))
        else:
            split=True
            for s in range(0,l,chunk): items.append((b,s,min(l,s+chunk),1))
        indptr.append(len(items))
    return items,indptr,split

def rope(x,pos,theta,scale):
    D=x.shape[-1]; i=np.arange(D//2); f=theta**(-2.0*i/D)/scale; a=pos*f
    c,s=np.cos(a),np.sin(a); lo,hi=x[...,:D//2],x[...,D//2:]
    return np.concatenate([lo*c-hi*s, hi*c+lo*s],-1)

def kernel_cta(P, item, blk_y, TILE, D, out_o, out_lse, part_o, part_lse, blk_x):
    BDX,BDY,BDZ,NT,TZ,TPS=traits(D,TILE)
    b,cs,ce,split=item
    kv_head=blk_y//P['head_tiles']; 
    indptr,indices,last=P['indptr'],P['indices'],P['last']
    ps=P['page_size']
    page_begin=indptr[b]; kv_len=(indptr[b+1]-page_begin-1)*ps+last[b]; q_pos=kv_len-1
    start=cs; end=min(ce,kv_len)
    if P['window']>=0: start=max(start,q_pos-P['window'])
    off=P['rope_off'][b]
    n=max(end-start,0); iters=(n+TPS-1)//TPS
    # per (ty,tz) states
    res={}
    for ty in range(BDY):
        hig=(blk_y%P['head_tiles'])*TILE+ty; valid=hig<P['group']; qo=kv_head*P['group']+hig
        q=P['q'][b,qo].copy() if valid else np.zeros(D)
        if P['rope']: q=rope(q,q_pos+off,P['theta'],P['scale'])
        q=q*P['q_scale']
        for tz in range(BDZ):
            m=-np.inf; d=0.0; o=np.zeros(D)
            for it in range(iters):
                stage_start=start+it*TPS
                # load stage (tokens tid/BDX + i*(NT/BDX))
                K=np.zeros((TPS,D)); V=np.zeros((TPS,D))
                for tok in range(TPS):
                    t=stage_start+tok
                    if t<end:
                        page=indices[page_begin+t//ps]
                        K[tok]=P['K'][page,t%ps,kv_head]; V[tok]=P['V'][page,t%ps,kv_head]
                        if P['rope']: K[tok]=rope(K[tok],t+off,P['theta'],P['scale'])
                s=np.zeros(TZ)
                for j in range(TZ):
                    tok=tz*TZ+j; acc=q@K[tok]
                    if P['cap']>0: acc=P['cap_log2']*math.tanh(acc)
                    s[j]=acc if stage_start+tok<end else -np.inf
                m_new=max(m,s.max())
                if m_new!=-np.inf:
                    sc=2.0**(m-m_new) if m!=-np.inf else 0.0
                    d*=sc; o*=sc
                    for j in range(TZ):
                        pj=2.0**(s[j]-m_new) if s[j]!=-np.inf else 0.0
                        d+=pj; o+=pj*V[tz*TZ+j]
                    m=m_new
            res[(ty,tz)]=(m,d,o)
        # merge across tz
        m_all=max(res[(ty,z)][0] for z in range(BDZ)); d=0.0; o=np.zeros(D)
        if m_all!=-np.inf:
            for z in range(BDZ):
                mz,dz,oz=res[(ty,z)]
                if mz==-np.inf: continue
                w=2.0**(mz-m_all); d+=w*dz; o+=w*oz
        if not valid: continue
        empty=not d>0
        o=o*(0 if empty else 1/d); lse=-np.inf if empty else (m_all+math.log2(d))*LN2
        if not split: out_o[b,qo]=o; out_lse[b,qo]=lse
        else: part_o[blk_x,qo]=o; part_lse[blk_x,qo]=lse

def run(kv_len, ps, Hkv, group, D, rope_on=False, cap=0.0, window=-1, fixed=0, target=64):
    H=Hkv*group; B=len(kv_len)
    npages=[ (l+ps-1)//ps for l in kv_len]; tot=sum(npages)+3
    perm=rng.permutation(tot); indptr=[0]; indices=[]; k=0
    for n in npages: indices+=list(perm[k:k+n]); k+=n; indptr.append(len(indices))
    last=[l-(n-1)*ps for l,n in zip(kv_len,npages)]
    K=rng.standard_normal((tot,ps,Hkv,D)); V=rng.standard_normal((tot,ps,Hkv,D)); q=rng.standard_normal((B,H,D))
    sm=1/math.sqrt(D)
    TILE=1 if group<=1 else 2 if group<=2 else 4 if group<=4 else 8
    head_tiles=(group+TILE-1)//TILE
    P=dict(indptr=indptr,indices=indices,last=last,page_size=ps,K=K,V=V,q=q,group=group,head_tiles=head_tiles,
           window=window,rope=rope_on,theta=1e4,scale=1.0,rope_off=rng.integers(0,100,B),cap=cap,
           cap_log2=cap*LOG2E, q_scale=(sm/cap if cap>0 else sm*LOG2E))
    items,cindptr,split=schedule(kv_len,Hkv*head_tiles,ps,target,fixed)
    out_o=np.full((B,H,D),np.nan); out_lse=np.full((B,H),np.nan)
    part_o=np.full((len(items),H,D),np.nan); part_lse=np.full((len(items),H),np.nan)
    for bx,it in enumerate(items):
        for by in range(Hkv*head_tiles):
            kernel_cta(P,it,by,TILE,D,out_o,out_lse,part_o,part_lse,bx)
    if split:  # merge kernel
        for r in range(B):
            first=cindptr[r]; cnt=cindptr[r+1]-first
            if cnt==1: continue
            for h in range(H):
                s=part_lse[first:first+cnt,h]; m=s.max()
                if m==-np.inf: out_o[r,h]=0; out_lse[r,h]=-np.inf; continue
                w=np.where(s==-np.inf,0,np.exp(s-m)); tot_w=w.sum()
                out_o[r,h]=(w[:,None]*part_o[first:first+cnt,h]).sum(0)/tot_w; out_lse[r,h]=m+math.log(tot_w)
    # reference
    ref_o=np.zeros((B,H,D)); ref_l=np.zeros((B,H))
    for b in range(B):
        L=kv_len[b]; pos=np.arange(L)
        Kb=np.stack([K[indices[indptr[b]+t//ps],t%ps] for t in range(L)]); Vb=np.stack([V[indices[indptr[b]+t//ps],t%ps] for t in range(L)])
        for h in range(H):
            kh=h//group; qq=q[b,h]; kk=Kb[:,kh]
            if rope_on:
                qq=rope(qq,L-1+P['rope_off'][b],1e4,1.0); kk=np.stack([rope(kk[t],t+P['rope_off'][b],1e4,1.0) for t in range(L)])
            s=kk@qq*sm
            if cap>0: s=cap*np.tanh(s/cap)
            vis=np.ones(L,bool)
            if window>=0: vis&=pos>=L-1-window
            s=np.where(vis,s,-np.inf); m=s.max(); w=np.exp(s-m)
            ref_o[b,h]=(w[:,None]*Vb[:,kh]).sum(0)/w.sum(); ref_l[b,h]=m+math.log(w.sum())
    assert not np.isnan(out_o).any() and not np.isnan(out_lse).any(), "unwritten"
    e=np.linalg.norm(out_o-ref_o)/np.linalg.norm(ref_o); el=np.abs(out_lse-ref_l).max()
    return e,el,split,len(items)

for args in [dict(kv_len=[1,7,40],ps=16,Hkv=2,group=4,D=64),
             dict(kv_len=[97,5,300],ps=7,Hkv=1,group=3,D=64,rope_on=True,fixed=32),
             dict(kv_len=[1000],ps=1,Hkv=1,group=1,D=64,window=100,cap=20.0),
             dict(kv_len=[700,33],ps=64,Hkv=1,group=8,D=128,fixed=100,window=0),
             dict(kv_len=[2000],ps=16,Hkv=1,group=2,D=64,target=8),
             dict(kv_len=[50,600],ps=16,Hkv=1,group=16,D=64,rope_on=True,window=64,fixed=48)]:
    e,el,split,n=run(**args)
    print(f"{str(args):110s} rel_o={e:.2e} lse_err={el:.2e} split={split} items={n}")
    assert e<1e-9 and el<1e-9
print("CUDA-core kernel logic OK")
