"""Re-measure the claims of lesson 09 and of the four draft inserts on 5 seed sets (offsets 0,
+100, ..., +400 applied to every seed), as reported for issue 16:

    python docs/drafts/seed_sets.py lesson09      # real gloo processes; ~2-3 min
    python docs/drafts/seed_sets.py init|smooth|shift|elr
"""
import sys
import time

from course_utils.experiments import (
    effective_lr,
    init_gradients,
    mixed_precision,
    smoothness,
    sync_bn,
    variance_shift,
)


def lesson09():
    for off in (0, 100, 200, 300, 400):
        t = time.time()
        r = sync_bn.run_experiment(seed=0 + off, world_size=2, per_process=2, steps=250, lrs=(0.01, 0.03, 0.1))
        best = {s: r.accuracy(s, r.best_lr(s)) for s in (False, True)}
        c1 = best[True] - best[False]
        err = mixed_precision.variance_errors([0, 1, 10, 100, 1000], n=256, d=64, seed=0 + off)
        c2a, c2b = err["bfloat16, sums"][3], err["float32, two-pass"][3]
        a32 = mixed_precision.train_offset_mlp("sums in float32", 64.0, seed=0 + off)
        a16 = mixed_precision.train_offset_mlp("sums in bfloat16", 64.0, seed=0 + off)
        c3 = a32 - a16
        print(f"offset {off}: sync gap {c1:.4f} (sync {best[True]:.3f} @ {r.best_lr(True)}, per-process {best[False]:.3f} @ {r.best_lr(False)}) [{r.transport[:11]}]; "
              f"bf16 sums err@100 {c2a:.3f}, f32 two-pass {c2b:.2e}; mp gap {c3:.4f} ({a32:.3f} vs {a16:.3f}); {time.time()-t:.0f}s", flush=True)


def measurements(which):
    for off in (0, 100, 200, 300, 400):
        t = time.time(); s = 0 + off
        if which == "smooth":
            sm = {n: smoothness.landscape_probe(n, depth=6, width=100, lr=0.1, steps=300, seed=s).summary() for n in ("none", "batch")}
            r = {k: sm["none"][k] / sm["batch"][k] for k in ("loss_variation", "grad_change", "beta")}
            print(f"offset {off}: loss_variation {r['loss_variation']:.2f} (>3), grad_change {r['grad_change']:.2f} (>2.5), beta {r['beta']:.2f} (<2); {time.time()-t:.1f}s", flush=True)
        elif which == "shift":
            sh = {pl: variance_shift.variance_shift_experiment(pl, p=0.5, depth=3, width=256, steps=600, seed=s) for pl in variance_shift.PLACEMENTS}
            e = {pl: r.shifted_ratio - 1 for pl, r in sh.items()}
            print(f"offset {off}: excess before {e['before_bn']:.3f} (>0.2), after {e['after_bn']:+.3f} (|.|<0.1); acc {sh['before_bn'].acc:.4f}/{sh['before_bn'].acc_recalibrated:.4f} vs {sh['after_bn'].acc:.4f}/{sh['after_bn'].acc_recalibrated:.4f}; {time.time()-t:.1f}s", flush=True)
        elif which == "init":
            g = {a: init_gradients.weight_gradient_norms(a, depth=50, width=256, batch_size=128, seed=s) for a in init_gradients.ARCHITECTURES}
            dev = init_gradients.growth_per_layer(g["batch"]) / init_gradients.MEAN_FIELD_GROWTH - 1
            rr = (g["batch"][0] / g["batch"][-1]) / (g["residual"][0] / g["residual"][-1])
            print(f"offset {off}: growth dev {100*dev:+.2f}% (|.|<3%), bn/residual spread ratio {rr:.0f} (>100); {time.time()-t:.1f}s", flush=True)
        elif which == "elr":
            arms = {(wd, k): effective_lr.track_weight_norm(wd, lr=0.1, momentum=0.9, steps=1000, init_scale=k, seed=s) for wd in (0.0, 5e-3) for k in (1.0, 4.0)}
            p = effective_lr.equilibrium_angular_update(0.1, 5e-3, 0.9)
            late = {a: tr.late_angle() for a, tr in arms.items()}
            print(f"offset {off}: with decay {late[5e-3,1.0]/p-1:+.3f}, {late[5e-3,4.0]/p-1:+.3f} (|.|<0.1); no-decay ratio {late[0.0,1.0]/late[0.0,4.0]:.1f} (>5); {time.time()-t:.1f}s", flush=True)


if __name__ == "__main__":
    lesson09() if sys.argv[1] == "lesson09" else measurements(sys.argv[1])
