"""tensor.optim: every optimizer against the textbook update written in numpy here (and
against PyTorch when installed), param_groups, state_dict round trips, schedulers."""
import math

import numpy as np
import pytest

import tensor
import tensor.nn as nn
from tensor import optim
from tensor.optim import lr_scheduler as sched

try:
    import torch
except Exception:  # torch is optional: cross-checks skip without it
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

N_STEPS = 6


def _problem(seed=0):
    """Two float64 parameters and a fixed sequence of gradients for each step."""
    rng = np.random.default_rng(seed)
    init = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    grads = [[rng.normal(size=a.shape) for a in init] for _ in range(N_STEPS)]
    return init, grads


def _run_zgrad(make, init, grads):
    ps = [nn.Parameter(tensor.tensor(a.copy())) for a in init]
    opt = make(ps)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = tensor.tensor(g.copy())
        opt.step()
    return [p.detach().numpy() for p in ps], opt, ps


# -- textbook updates in numpy ------------------------------------------------------------------
def ref_sgd(x, gs, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):
    x = x.copy()
    buf = None
    for g in gs:
        g = -g if maximize else g
        g = g + weight_decay * x
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        x = x - lr * g
    return x


def ref_adam(x, gs, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             decoupled=False, maximize=False):
    x = x.copy()
    b1, b2 = betas
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    vmax = np.zeros_like(x)
    for t, g in enumerate(gs, 1):
        g = -g if maximize else g
        if decoupled:
            x = x * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - b2 ** t)
        x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
    return x


def ref_rmsprop(x, gs, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False, maximize=False):
    x = x.copy()
    s = np.zeros_like(x)
    ga = np.zeros_like(x)
    buf = np.zeros_like(x)
    for g in gs:
        g = -g if maximize else g
        g = g + weight_decay * x
        s = alpha * s + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            d = np.sqrt(s - ga * ga) + eps
        else:
            d = np.sqrt(s) + eps
        if momentum > 0:
            buf = momentum * buf + g / d
            x = x - lr * buf
        else:
            x = x - lr * g / d
    return x


def ref_adagrad(x, gs, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10, maximize=False):
    x = x.copy()
    acc = np.full_like(x, initial_accumulator_value)
    for t, g in enumerate(gs, 1):
        g = -g if maximize else g
        g = g + weight_decay * x
        acc = acc + g * g
        x = x - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(acc) + eps)
    return x


def ref_adadelta(x, gs, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    x = x.copy()
    sq = np.zeros_like(x)
    acc = np.zeros_like(x)
    for g in gs:
        g = -g if maximize else g
        g = g + weight_decay * x
        sq = rho * sq + (1 - rho) * g * g
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc = rho * acc + (1 - rho) * delta * delta
        x = x - lr * delta
    return x


CASES = [
    ("SGD", dict(lr=0.1), ref_sgd),
    ("SGD", dict(lr=0.1, momentum=0.9), ref_sgd),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01), ref_sgd),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1), ref_sgd),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True), ref_sgd),
    ("Adam", dict(lr=0.01), ref_adam),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1), ref_adam),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True), ref_adam),
    ("AdamW", dict(lr=0.01), ref_adam),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True), ref_adam),
    ("RMSprop", dict(lr=0.01), ref_rmsprop),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.7), ref_rmsprop),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, maximize=True), ref_rmsprop),
    ("Adagrad", dict(lr=0.1), ref_adagrad),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3,
                     maximize=True), ref_adagrad),
    ("Adadelta", dict(), ref_adadelta),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, maximize=True),
     ref_adadelta),
]


def _ref_kwargs(name, kw):
    kw = dict(kw)
    if name == "AdamW":
        kw.setdefault("weight_decay", 1e-2)
        kw["decoupled"] = True
    return kw


@pytest.mark.parametrize("name,kw,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_optimizer_matches_textbook_update(name, kw, ref):
    init, grads = _problem()
    out, _, _ = _run_zgrad(lambda ps: getattr(optim, name)(ps, **kw), init, grads)
    for j, x0 in enumerate(init):
        expect = ref(x0, [gs[j] for gs in grads], **_ref_kwargs(name, kw))
        np.testing.assert_allclose(out[j], expect, rtol=1e-12, atol=1e-14)


@requires_torch
@pytest.mark.parametrize("name,kw,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_optimizer_matches_pytorch(name, kw, ref):
    init, grads = _problem(1)
    out, opt, _ = _run_zgrad(lambda ps: getattr(optim, name)(ps, **kw), init, grads)
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    topt = getattr(torch.optim, name)(tp, **kw)
    for gs in grads:
        for p, g in zip(tp, gs):
            p.grad = torch.tensor(g.copy())
        topt.step()
    for o, t in zip(out, tp):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=1e-10, atol=1e-13)
    # the same state names, and the same per-parameter state values
    ours_sd, theirs_sd = opt.state_dict(), topt.state_dict()
    assert set(ours_sd["state"]) == set(theirs_sd["state"])
    for i in theirs_sd["state"]:
        assert set(ours_sd["state"][i]) == set(theirs_sd["state"][i])
        for k, v in theirs_sd["state"][i].items():
            np.testing.assert_allclose(ours_sd["state"][i][k].numpy(), v.numpy(), rtol=1e-10,
                                       atol=1e-13)
    assert ours_sd["param_groups"][0]["params"] == theirs_sd["param_groups"][0]["params"]


def test_step_bumps_version_so_stale_graph_refuses_backward():
    p = nn.Parameter(tensor.ones(3))
    loss = (p * p).sum()  # mul saves p
    p.grad = tensor.ones(3)
    optim.SGD([p], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_params_without_grad_are_skipped_and_closure_runs():
    a, b = nn.Parameter(tensor.ones(2)), nn.Parameter(tensor.ones(2))
    opt = optim.Adam([a, b], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (a * 3).sum()
        loss.backward()
        return loss
    assert opt.step(closure).item() == 6
    assert not np.array_equal(a.detach().numpy(), [1, 1])
    np.testing.assert_array_equal(b.detach().numpy(), [1, 1])
    assert b not in opt.state


def test_param_groups_have_their_own_options():
    w, b = nn.Parameter(tensor.ones(2)), nn.Parameter(tensor.ones(2))
    opt = optim.SGD([{"params": [w]}, {"params": b, "lr": 1.0}], lr=0.1, momentum=0.0)
    w.grad, b.grad = tensor.ones(2), tensor.ones(2)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.9, 0.9])
    np.testing.assert_allclose(b.detach().numpy(), [0.0, 0.0])
    assert opt.param_groups[1]["momentum"] == 0.0
    c = nn.Parameter(tensor.ones(1))
    opt.add_param_group({"params": [c], "lr": 0.5})
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["lr"] == 0.5
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [c]})
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD({w}, lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([w * 2], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.Adam([w], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([w], lr=0.1, nesterov=True)


def test_zero_grad_modes():
    p = nn.Parameter(tensor.ones(2))
    opt = optim.SGD([p], lr=0.1)
    p.grad = tensor.ones(2)
    g = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is g and not g.numpy().any()
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=0.01),
    lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True)])
def test_state_dict_round_trip_through_save_continues_identically(make, tmp_path):
    init, grads = _problem(2)
    ps_a = [nn.Parameter(tensor.tensor(a.copy())) for a in init]
    opt_a = make(ps_a)
    for gs in grads[:3]:
        for p, g in zip(ps_a, gs):
            p.grad = tensor.tensor(g.copy())
        opt_a.step()
    tensor.save({"opt": opt_a.state_dict(), "params": [p.detach() for p in ps_a]},
                tmp_path / "ck.safetensors")
    ck = tensor.load(tmp_path / "ck.safetensors")
    ps_b = [nn.Parameter(t.clone()) for t in ck["params"]]
    opt_b = make(ps_b)
    opt_b.load_state_dict(ck["opt"])
    assert opt_b.param_groups[0]["params"] == ps_b
    assert opt_b.state_dict()["param_groups"] == opt_a.state_dict()["param_groups"]
    for gs in grads[3:]:
        for pa, pb, g in zip(ps_a, ps_b, gs):
            pa.grad, pb.grad = tensor.tensor(g.copy()), tensor.tensor(g.copy())
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(ps_a, ps_b):
        np.testing.assert_array_equal(pa.detach().numpy(), pb.detach().numpy())


def test_load_state_dict_checks_group_sizes_and_copies_state():
    a, b = nn.Parameter(tensor.ones(2)), nn.Parameter(tensor.ones(3))
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = tensor.ones(2), tensor.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1] and set(sd["state"]) == {0, 1}
    with pytest.raises(ValueError, match="doesn't match the size"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    other = optim.SGD([nn.Parameter(tensor.ones(2)), nn.Parameter(tensor.ones(3))], lr=1.0)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["momentum"] == 0.9
    buf = next(iter(other.state.values()))["momentum_buffer"]
    assert buf.array is not sd["state"][0]["momentum_buffer"].array


def test_float32_parameters_stay_float32():
    p = nn.Parameter(tensor.ones(4))
    for make in (lambda: optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1),
                 lambda: optim.Adam([p]), lambda: optim.RMSprop([p], centered=True)):
        opt = make()
        p.grad = tensor.ones(4)
        opt.step()
        assert p.dtype == tensor.float32
        assert all(v.dtype in (tensor.float32,) for v in opt.state[p].values())


# -- schedulers --------------------------------------------------------------------------------
def _lrs(make_sched, n=12, base_lr=1.0):
    opt = optim.SGD([nn.Parameter(tensor.ones(1))], lr=base_lr)
    s = make_sched(opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(n):
        opt.step()
        s.step()
        out.append(opt.param_groups[0]["lr"])
        assert s.get_last_lr() == [out[-1]]
    return out


def test_schedulers_follow_their_formulas():
    e = np.arange(13)
    np.testing.assert_allclose(_lrs(lambda o: sched.StepLR(o, 3, 0.5)), 0.5 ** (e // 3))
    np.testing.assert_allclose(_lrs(lambda o: sched.MultiStepLR(o, [2, 5, 5, 9], 0.1)),
                               0.1 ** np.searchsorted([2, 5, 5, 9], e, side="right"))
    np.testing.assert_allclose(_lrs(lambda o: sched.ExponentialLR(o, 0.9)), 0.9 ** e)
    # the recursive (chainable) form equals the closed form, past T_max too (it cycles back)
    np.testing.assert_allclose(_lrs(lambda o: sched.CosineAnnealingLR(o, 8, eta_min=0.1)),
                               0.1 + 0.9 * (1 + np.cos(np.pi * e / 8)) / 2, atol=1e-12)
    np.testing.assert_allclose(_lrs(lambda o: sched.LinearLR(o, 0.25, 1.0, 4)),
                               0.25 + 0.75 * np.minimum(e, 4) / 4)
    np.testing.assert_allclose(_lrs(lambda o: sched.LambdaLR(o, lambda t: 1 / (t + 1))),
                               1 / (e + 1))


def test_sequential_lr_warmup_then_cosine():
    def make(o):
        warm = sched.LinearLR(o, start_factor=0.1, total_iters=3)
        cos = sched.CosineAnnealingLR(o, T_max=6)
        return sched.SequentialLR(o, [warm, cos], milestones=[3])
    lrs = _lrs(make, n=9)
    expect = [0.1 + 0.9 * t / 3 for t in range(3)] + \
        [(1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)]
    np.testing.assert_allclose(lrs, expect, atol=1e-12)


SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=4, eta_min=0.01)),  # past T_max: PyTorch's cycle
    ("LinearLR", dict(start_factor=0.2, end_factor=0.9, total_iters=5)),
]


@requires_torch
@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_scheduler_matches_pytorch(name, kw):
    ours = _lrs(lambda o: getattr(sched, name)(o, **kw), n=15, base_lr=0.5)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    ts = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    theirs = [topt.param_groups[0]["lr"]]
    for _ in range(15):
        topt.step()
        ts.step()
        theirs.append(topt.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@requires_torch
def test_sequential_lr_matches_pytorch():
    def build(mod, opt):
        a = mod.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4)
        b = mod.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        c = mod.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
        return mod.lr_scheduler.SequentialLR(opt, [a, b, c], milestones=[4, 8])
    ours = _lrs(lambda o: build(optim, o), n=14)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ts = build(torch.optim, topt)
    theirs = [topt.param_groups[0]["lr"]]
    for _ in range(14):
        topt.step()
        ts.step()
        theirs.append(topt.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_scheduler_state_dict_round_trip(tmp_path):
    def make(o):
        a = sched.LinearLR(o, start_factor=0.5, total_iters=2)
        b = sched.MultiStepLR(o, milestones=[3, 6], gamma=0.5)
        return sched.SequentialLR(o, [a, b], milestones=[2])
    opt = optim.SGD([nn.Parameter(tensor.ones(1))], lr=1.0)
    s = make(opt)
    for _ in range(4):
        opt.step()
        s.step()
    tensor.save({"sched": s.state_dict(), "opt": opt.state_dict()}, tmp_path / "s.st")
    ck = tensor.load(tmp_path / "s.st")
    opt2 = optim.SGD([nn.Parameter(tensor.ones(1))], lr=1.0)
    s2 = make(opt2)
    opt2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    for _ in range(6):
        for o, sc in ((opt, s), (opt2, s2)):
            o.step()
            sc.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
        assert s.get_last_lr() == s2.get_last_lr()


def test_lambda_lr_state_dict_skips_functions():
    opt = optim.SGD([nn.Parameter(tensor.ones(1))], lr=1.0)
    s = sched.LambdaLR(opt, lambda t: 0.5 ** t)
    s.step()
    sd = s.state_dict()
    assert sd["lr_lambdas"] == [None] and sd["last_epoch"] == 1
    s2 = sched.LambdaLR(optim.SGD([nn.Parameter(tensor.ones(1))], lr=1.0), lambda t: 0.5 ** t)
    s2.load_state_dict(sd)
    s2.step()
    assert s2.get_last_lr() == [0.25]


# -- GPU (skips without CuPy) ---------------------------------------------------------------------
from tests.helpers import requires_cupy  # noqa: E402


@requires_cupy
@pytest.mark.parametrize("name,kw,ref", CASES[::2], ids=[f"{c[0]}-{i}" for i, c in
                                                         enumerate(CASES[::2])])
def test_optimizer_on_cuda_matches_cpu(name, kw, ref):
    init, grads = _problem(3)
    cpu, _, _ = _run_zgrad(lambda ps: getattr(optim, name)(ps, **kw), init, grads)
    ps = [nn.Parameter(tensor.tensor(a.copy(), device="cuda")) for a in init]
    opt = getattr(optim, name)(ps, **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = tensor.tensor(g.copy(), device="cuda")
        opt.step()
    for c, p in zip(cpu, ps):
        assert p.device.type == "cuda"
        np.testing.assert_allclose(p.detach().cpu().numpy(), c, rtol=1e-10, atol=1e-12)
    # state round trip moves state to the parameters' device
    sd = opt.state_dict()
    opt2 = getattr(optim, name)(ps, **kw)
    opt2.load_state_dict(sd)
    for st in opt2.state.values():
        for k, v in st.items():
            assert v.device.type == ("cpu" if k == "step" else "cuda")


@requires_cupy
def test_model_cuda_train_step_and_clip():
    tensor.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
    w = model[0].weight
    model.cuda()
    assert model[0].weight is w and w.device.type == "cuda"
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    x = tensor.randn(16, 6, device="cuda")
    y = tensor.randint(0, 3, (16,), device="cuda")
    for _ in range(3):
        loss = nn.CrossEntropyLoss()(model(x), y)
        opt.zero_grad()
        loss.backward()
        total = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        assert total.device.type == "cuda"
        opt.step()
    norm = math.sqrt(sum(float((p.grad * p.grad).sum().item()) for p in model.parameters()))
    assert norm <= 0.1 + 1e-5
    model.cpu()
    assert w.device.type == "cpu" and w.grad.device.type == "cpu"


# -- L-BFGS (closure-based) against PyTorch ----------------------------------------------------
def _lbfgs_run(lib, opt_mod, line_search_fn, n_steps=3, **kw):
    rng = np.random.default_rng(3)
    A, b = rng.normal(size=(8, 5)), rng.normal(size=(8,))
    At, bt = lib.tensor(A), lib.tensor(b)
    w = lib.tensor(np.full(5, 0.5), requires_grad=True)
    c = lib.tensor(np.array([0.2]), requires_grad=True)
    opt = opt_mod.LBFGS([w, c], line_search_fn=line_search_fn, **kw)

    def closure():
        opt.zero_grad()
        r = At @ w + c - bt
        loss = (r * r).sum() + ((w * w - 0.1) ** 2).sum()  # non-quadratic: a real line search
        loss.backward()
        return loss
    losses = [opt.step(closure).item() for _ in range(n_steps)]
    st = opt.state[w]
    return losses, w.detach().numpy().copy(), c.detach().numpy().copy(), st


@requires_torch
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("kw", [dict(), dict(lr=0.5, max_iter=5, history_size=3)],
                         ids=["defaults", "short-history"])
def test_lbfgs_matches_pytorch(line_search_fn, kw):
    ours = _lbfgs_run(tensor, optim, line_search_fn, **kw)
    theirs = _lbfgs_run(torch, torch.optim, line_search_fn, **kw)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-8)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-7, atol=1e-10)
    assert ours[3]["func_evals"] == theirs[3]["func_evals"]
    assert ours[3]["n_iter"] == theirs[3]["n_iter"]


def test_lbfgs_needs_a_closure_and_a_known_line_search():
    p = nn.Parameter(tensor.ones(2))
    with pytest.raises(ValueError, match="strong_wolfe"):
        optim.LBFGS([p], line_search_fn="backtracking")
    with pytest.raises(RuntimeError, match="closure"):
        optim.LBFGS([p]).step(None)


# -- OneCycleLR and ReduceLROnPlateau against PyTorch -------------------------------------------
@requires_torch
@pytest.mark.parametrize("opt_name,kw", [
    ("SGD", dict(max_lr=0.5, total_steps=20)),
    ("SGD", dict(max_lr=[0.5], epochs=4, steps_per_epoch=5, pct_start=0.25,
                 anneal_strategy="linear", three_phase=True)),
    ("Adam", dict(max_lr=0.01, total_steps=15, div_factor=10.0, final_div_factor=100.0)),
], ids=["sgd-cos", "sgd-linear-three-phase", "adam-beta1"])
def test_one_cycle_matches_pytorch(opt_name, kw):
    def run(lib_optim, p):
        extra = dict(momentum=0.9) if opt_name == "SGD" else {}
        opt = getattr(lib_optim, opt_name)([p], lr=0.1, **extra)
        s = lib_optim.lr_scheduler.OneCycleLR(opt, **kw)
        out = []
        n = kw.get("total_steps") or kw["epochs"] * kw["steps_per_epoch"]
        for _ in range(n - 1):
            opt.step()
            s.step()
            g = opt.param_groups[0]
            out.append((g["lr"], g["momentum"] if "momentum" in g else g["betas"][0]))
        return out
    ours = run(optim, nn.Parameter(tensor.zeros(1)))
    theirs = run(torch.optim, torch.zeros(1, requires_grad=True))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@requires_torch
@pytest.mark.parametrize("kw", [dict(patience=2), dict(mode="max", factor=0.5, patience=1,
                                                       threshold=0.1, threshold_mode="abs",
                                                       cooldown=2, min_lr=0.01)])
def test_reduce_lr_on_plateau_matches_pytorch(kw):
    metrics = [1.0, 0.9, 0.95, 0.93, 0.94, 0.96, 0.7, 0.71, 0.72, 0.73, 0.74, 0.9, 0.92, 0.93]
    if kw.get("mode") == "max":
        metrics = [-m for m in metrics]

    def run(lib_optim, p):
        opt = lib_optim.SGD([p], lr=1.0)
        s = lib_optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
        out = []
        for m in metrics:
            s.step(m)
            out.append(opt.param_groups[0]["lr"])
        return out
    ours = run(optim, nn.Parameter(tensor.zeros(1)))
    theirs = run(torch.optim, torch.zeros(1, requires_grad=True))
    assert len(set(theirs)) > 1  # the case really reduces
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
