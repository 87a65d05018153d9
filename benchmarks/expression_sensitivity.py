"""What the stage-0 face encoders see of each expression parameter at the demo's resolution.

    python benchmarks/expression_sensitivity.py --encoders WORKDIR [--clips 8] [--delta 0.5] [--probe-clips 200]

For each of the first `--clips` held-out identities, a neutral face with the mouth nearly closed
is rendered, then the same face with one state parameter raised by `--delta` (brow_raise,
brow_inner, eye_open, corner, and the mouth opening for comparison). Each encoder's output moves
by |e(x') - e(x)|; the mean over identities is printed for the expression encoder (e_v, what
Di-CTE and ETHD's expression path carry) and the lip encoder (l_v), with `input_px`, the size
the encoders resize the face to. A parameter whose e_v move is a small fraction of the others'
is not seen by that encoder, so no loss read through it can reward drawing it.

`probe_r` is the other half: a ridge probe from each encoder's output to each parameter (and
the opening), fitted on 12 frames of each of `--probe-clips` training clips and scored (r) on
48 held-out clips. A parameter the encoder does not see can still be predicted where it
follows what the encoder does see (in the synthetic domain the corners follow the emotion).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", required=True, help="stage-0 (`encoders`) workdir")
    p.add_argument("--variant", default="demo")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--delta", type=float, default=0.5)
    p.add_argument("--probe-clips", type=int, default=200, help="training clips of the ridge probe (0: none)")
    a = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.data.synthetic import SynthConfig, SyntheticDomain
    from emotivetalk_jax.models.vaid_variants import get_vaid_variant
    from emotivetalk_jax.train.stages.frozen import face_encoders

    variant = get_vaid_variant(a.variant)
    cfg = ml_collections.ConfigDict({"init": {"face_encoders": a.encoders}})
    enc = face_encoders(cfg, variant, 0)
    run = jax.jit(lambda x: (enc.encode_expression(x), enc.encode_lip(x)))
    domain = SyntheticDomain(0, SynthConfig(head_motion=0.0))
    keys = (*sf.EXPRESSION_KEYS, "opening")
    index = sf.STATE_KEYS.index
    moves = {"e_v": {k: [] for k in keys}, "l_v": {k: [] for k in keys}}
    for i in range(a.clips):
        clip = domain.clip(i, "test")
        base = clip.states[0].copy()
        base[2:6] = sf.NEUTRAL_EXPRESSION
        base[index("opening")] = 0.1
        states = [base]
        for k in keys:
            s = base.copy()
            s[index(k)] += a.delta
            states.append(s)
        x = sf.render(clip.identity, np.stack(states), variant.face.image_size).astype(np.float32) / 127.5 - 1.0
        e, l = (np.asarray(t) for t in run(jnp.asarray(x)))
        for name, out in (("e_v", e), ("l_v", l)):
            for j, k in enumerate(keys):
                moves[name][k].append(float(np.linalg.norm(out[j + 1] - out[0])))
    out = {"encoders": a.encoders, "input_px": variant.face.image_size, "delta": a.delta, "clips": a.clips,
           **{name: {k: round(float(np.mean(v)), 3) for k, v in m.items()} for name, m in moves.items()}}
    if a.probe_clips:
        cols = [index(k) for k in keys]

        def features(split, n):
            feats, targets = {"e_v": [], "l_v": []}, []
            for i in range(n):
                clip = domain.clip(i, split)
                states = clip.states[:48:4]
                x = sf.render(clip.identity, states, variant.face.image_size).astype(np.float32) / 127.5 - 1.0
                e, l = run(jnp.asarray(x))
                feats["e_v"].append(np.asarray(e))
                feats["l_v"].append(np.asarray(l))
                targets.append(states[:, cols])
            return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(targets)

        (f_tr, y_tr), (f_te, y_te) = features("train", a.probe_clips), features("test", 48)
        out["probe_r"] = {}
        for name in f_tr:
            mu, sd = f_tr[name].mean(0), f_tr[name].std(0) + 1e-6
            tr, te = (f_tr[name] - mu) / sd, (f_te[name] - mu) / sd
            w = np.linalg.solve(tr.T @ tr + 10.0 * np.eye(tr.shape[1]), tr.T @ (y_tr - y_tr.mean(0)))
            pred = te @ w + y_tr.mean(0)
            out["probe_r"][name] = {k: round(float(np.corrcoef(pred[:, j], y_te[:, j])[0, 1]), 3)
                                    for j, k in enumerate(keys)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
