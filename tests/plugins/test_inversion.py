"""The DeepInversion inverter: Eq. 2-4 terms, memory updates, reversed outer loss."""

import pytest
import torch
import torch.nn.functional as F
from purer_plugins.inversion.deepinv import DeepInversion
from purer_plugins.learners.maml import MAML
from torch import nn

from purer.engine.pseudo_episodes import OwnerTable, sample_pseudo_episodes
from purer.kernels.losses import (
    batch_moments,
    bn_statistics,
    l2_prior,
    moments_and_max_pool,
    total_variation,
)
from purer.testing import TINY_SPACE as SPACE
from purer.testing import inversion_loss, setup_inverter
from purer.testing import tiny_teacher as make_teacher
from purer.types import InputSpace


def make_inverter(teachers, per_class=4, seed=0, terms=None, term_options=None,
                  **options) -> DeepInversion:
    return setup_inverter("deepinv", teachers, per_class, seed, inversion_loss(terms, term_options),
                          **options)


def test_inversion_loss_decreases():
    inverter = make_inverter([make_teacher(0, [0, 1, 2]), make_teacher(1, [3, 4, 5])])
    first = inverter.step(None, {})["total"]
    for _ in range(40):
        last = inverter.step(None, {})["total"]
    assert last < 0.7 * first


def test_each_teacher_counted_once():
    a, b = make_teacher(0, [0, 1]), make_teacher(1, [2, 3])
    both = make_inverter([a, b], jitter=0)
    only_a = make_inverter([a], jitter=0)
    only_b = make_inverter([b], jitter=0)
    with torch.no_grad():
        only_a.memory[0].copy_(both.memory[0])
        only_b.memory[0].copy_(both.memory[1])
    total = both.inversion_loss()[0]
    assert torch.allclose(total, only_a.inversion_loss()[0] + only_b.inversion_loss()[0])


def test_terms_match_the_equations():
    teacher = make_teacher(0, [0, 1])
    inverter = make_inverter([teacher], jitter=0, terms={"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01})
    x = inverter.memory[0].detach()
    feats = teacher.model[0](x)
    var, mean = torch.var_mean(feats, dim=(0, 2, 3), correction=0)
    bn = bn_statistics([(mean, var, teacher.model[1].running_mean, teacher.model[1].running_var)])
    ce = nn.functional.cross_entropy(teacher.model(x), torch.arange(2).repeat_interleave(4))
    expected = ce + 1e-4 * total_variation(x) + 1e-5 * l2_prior(x) + 0.01 * bn
    total, parts = inverter.inversion_loss()
    assert torch.allclose(total, expected, atol=1e-5)
    assert torch.allclose(parts["bn"], bn, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_moments_match_var_mean_with_gradients(shape, channels_last):
    torch.manual_seed(0)
    x = (torch.randn(*shape, dtype=torch.double) * 2 + 3)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    got_mean, got_var = batch_moments(x)
    assert torch.allclose(got_mean, mean) and torch.allclose(got_var, var)
    weights = torch.randn(2, x.shape[1], dtype=torch.double)
    expected = torch.autograd.grad((weights[0] * mean).sum() + (weights[1] * var).sum(), x)[0]
    got = torch.autograd.grad((weights[0] * got_mean).sum() + (weights[1] * got_var).sum(), x)[0]
    assert torch.allclose(got, expected)
    assert torch.autograd.gradcheck(lambda t: batch_moments(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: batch_moments(t), (x,))


@pytest.mark.parametrize("channels_last", [False, True])
def test_moments_and_max_pool_match_the_separate_ops_through_second_order(channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 6, dtype=torch.double) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = torch.randn(2, 4, dtype=torch.double)

    def loss(mean, var, pooled):
        return (weights[0] * mean).sum() + (weights[1] * var).sum() + (pooled ** 3).sum()

    fused = moments_and_max_pool(x, 2)
    apart = (*batch_moments(x), F.max_pool2d(x, 2))
    for got, expected in zip(fused, apart):
        torch.testing.assert_close(got, expected)
    grads = [torch.autograd.grad(loss(*outs), x, create_graph=True)[0] for outs in (fused, apart)]
    torch.testing.assert_close(grads[0], grads[1])
    second = [torch.autograd.grad((g * g).sum(), x)[0] for g in grads]
    torch.testing.assert_close(second[0], second[1])
    assert torch.autograd.gradcheck(lambda t: moments_and_max_pool(t, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: moments_and_max_pool(t, 2), (x,))


def test_max_pool_gradient_is_scattered_alike_in_both_layouts():
    """The channels-last scatter (flat NHWC offsets) must add exactly what the
    per-plane scatter adds: same values, same bits, and in place."""
    from purer.kernels.losses import _add_pooled_grad, _is_channels_last

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 6)
    pooled, indices = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), 2)
    assert _is_channels_last(indices)
    grad_pooled = torch.randn_like(pooled)
    start = torch.randn_like(x)
    plain = start.clone()
    _add_pooled_grad(plain, indices.contiguous(), grad_pooled.contiguous())
    nhwc = start.clone().contiguous(memory_format=torch.channels_last)
    storage = nhwc.data_ptr()
    _add_pooled_grad(nhwc, indices, grad_pooled)
    assert nhwc.data_ptr() == storage and _is_channels_last(nhwc)
    assert torch.equal(nhwc, plain)
    assert not torch.equal(plain, start)


def test_jitter_is_a_circular_shift_of_the_memory():
    inverter = make_inverter([make_teacher(0, [0, 1])], jitter=2)
    images = inverter.memory[0].detach()
    for _ in range(5):
        state = inverter.generator.get_state()
        pixels = inverter.draw()["pixels"]
        inverter.generator.set_state(state)  # replay the draw to know the shift
        dy, dx = torch.randint(-2, 3, (1, 2), generator=inverter.generator)[0].tolist()
        shifted = images.flatten(2).index_select(2, pixels).view(images.shape)
        assert torch.equal(shifted, torch.roll(images, shifts=(dy, dx), dims=(2, 3)))


@pytest.mark.slow
def test_compiled_loss_matches_eager():
    """``compile = true`` changes the speed, not the loss or its gradient."""
    teachers = [make_teacher(0, [0, 1]), make_teacher(1, [2, 3])]
    eager = make_inverter(teachers, jitter=0)
    compiled = make_inverter(teachers, jitter=0, compile=True)
    for _ in range(2):  # the second call runs the cached compiled code
        loss_e, parts_e = eager.inversion_loss()
        loss_c, parts_c = compiled.inversion_loss()
        assert torch.allclose(loss_e, loss_c, rtol=1e-4)
        assert all(torch.allclose(parts_e[k], parts_c[k], rtol=1e-4) for k in parts_e)
        grad_e = torch.autograd.grad(loss_e, eager.memory)
        grad_c = torch.autograd.grad(loss_c, compiled.memory)
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grad_e, grad_c))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    teachers = [make_teacher(0, [0, 1])]
    eager = make_inverter(teachers, jitter=0)
    inverter = make_inverter(teachers, jitter=0, compile=True)

    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(inverter, "_compiled", {"teacher": broken, "group": broken})
    with pytest.warns(UserWarning, match="inverter.compile: torch.compile failed .*no C\\+\\+ compiler found"):
        loss, _ = inverter.inversion_loss()
    assert torch.allclose(loss, eager.inversion_loss()[0])
    assert inverter._compiled is None  # later steps go straight to the eager loss


def test_compiling_is_announced_once_with_its_time(monkeypatch, capsys):
    teachers = [make_teacher(0, [0, 1])]
    inverter = make_inverter(teachers, jitter=0, compile=True)
    eager = {"teacher": inverter._teacher_loss, "group": inverter._group_loss}
    monkeypatch.setattr(inverter, "_compiled", eager)  # what runs is not the point here
    for _ in range(3):
        inverter.inversion_loss()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" with ")[0] for line in lines if "compiling" in line] == [
        "inverter.compile: compiling the teacher inversion loss"]
    assert "about a minute" in lines[0]
    assert sum("compiled in" in line for line in lines) == 1


def test_total_variation_sums_four_directions():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    # the centre pixel differs from 2 horizontal, 2 vertical and 2+2 diagonal neighbours
    assert torch.isclose(total_variation(x), torch.tensor(4 * 2 ** 0.5))


def test_teacher_without_bn_has_no_bn_term():
    inverter = make_inverter([make_teacher(0, [0, 1], bn=False)])
    assert inverter.step(None, {})["bn"] == 0.0


def test_memory_of_other_spaces_is_mapped_differentiably():
    other = InputSpace(12, (0.4, 0.4, 0.4), (0.3, 0.3, 0.3))
    inverter = make_inverter([make_teacher(0, [0, 1]), make_teacher(1, [2, 3], space=other)])
    bank = inverter.bank(SPACE, detach=False)
    assert bank.images.shape == (4, 4, 3, 8, 8)
    bank.images.sum().backward()
    assert inverter.memory[1].grad is not None and inverter.memory[1].grad.abs().sum() > 0


def tiny_net(classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))


def reversed_loss_grads(first_order: bool):
    torch.manual_seed(0)
    inverter = make_inverter([make_teacher(0, [0, 1, 2]), make_teacher(1, [3, 4, 5])], per_class=3)
    learner = MAML(MAML.Options(first_order=first_order))
    learner.setup(tiny_net(3), torch.device("cpu"))
    bank = inverter.bank(SPACE, detach=False)
    episode = sample_pseudo_episodes(bank, OwnerTable(bank.class_ids), 3, 1, 2, 1,
                                     torch.Generator().manual_seed(0))
    support_query = torch.autograd.grad(learner.outer_loss(episode, create_graph=True)[0],
                                        [episode.support, episode.query], allow_unused=True)
    return inverter, learner, support_query


def test_reversed_outer_loss_changes_the_memory_gradient():
    inverter, learner, _ = reversed_loss_grads(first_order=False)
    plain = torch.autograd.grad(inverter.inversion_loss()[0], inverter.memory)
    bank = inverter.bank(SPACE, detach=False)
    episode = sample_pseudo_episodes(bank, OwnerTable(bank.class_ids), 3, 1, 2, 1,
                                     torch.Generator().manual_seed(0))
    reversed_loss = -10.0 * learner.outer_loss(episode, create_graph=True)[0]
    mixed = torch.autograd.grad(inverter.inversion_loss()[0] + reversed_loss, inverter.memory)
    assert any(not torch.allclose(p, m) for p, m in zip(plain, mixed))
    # the meta-model's parameters are not touched by the inversion step
    assert all(p.grad is None for p in learner.model.parameters())


def test_support_images_get_gradient_only_through_the_second_order_step():
    _, _, (support_2nd, query_2nd) = reversed_loss_grads(first_order=False)
    _, _, (support_1st, query_1st) = reversed_loss_grads(first_order=True)
    assert query_2nd.abs().sum() > 0 and support_2nd.abs().sum() > 0
    assert support_1st is None or support_1st.abs().sum() == 0


def test_inline_term_plugin_replaces_a_builtin(register_plugin):
    import purer
    from purer.interfaces import InversionTerm

    class Brightness(InversionTerm):
        def __call__(self, ctx):
            return ctx.images.mean() ** 2

    class Plugin:
        @purer.hookimpl
        def register_inversion_terms(self, register):
            register("brightness", Brightness)

    register_plugin(Plugin(), name="brightness-plugin")
    inverter = make_inverter([make_teacher(0, [0, 1])], terms={"ce": 1.0, "brightness": 1.0})
    values = inverter.step(None, {})
    assert set(values) == {"ce", "brightness", "total"}


@pytest.mark.parametrize("precision", ["bf16"])
@pytest.mark.filterwarnings("ignore:inverter.precision")  # CPUs without native bf16 warn
def test_bf16_teacher_passes_stay_close_to_fp32(precision):
    teachers = [make_teacher(0, [0, 1])]
    a = make_inverter(teachers, jitter=0)
    b = make_inverter(teachers, jitter=0, precision=precision)
    assert torch.allclose(a.inversion_loss()[0], b.inversion_loss()[0], rtol=5e-2)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_warns_only_on_cpus_that_emulate_it(monkeypatch, native):
    """bf16 autocast on a CPU without AVX512-BF16/AMX is emulated and crawls
    (30x slower convolutions on an AVX2 EPYC): the option says so when set."""
    import warnings

    from purer import runtime

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: native)
    teachers = [make_teacher(0, [0, 1])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_inverter(teachers, precision="bf16")
        make_inverter(teachers, precision="fp32")
    messages = [str(w.message) for w in caught if "bfloat16" in str(w.message)]
    assert len(messages) == (0 if native else 1)
    assert all(m.startswith('inverter.precision = "bf16"') for m in messages)


def test_folded_teachers_give_the_hooked_loss_and_gradient():
    """``fold_batch_norm`` changes the speed, not the loss or its gradient."""
    from purer.kernels.teacher_view import FoldedTeacher, HookedTeacher

    teachers = [make_teacher(0, [0, 1]), make_teacher(1, [2, 3])]
    folded = make_inverter(teachers, jitter=0)
    hooked = make_inverter(teachers, jitter=0, fold_batch_norm=False)
    assert all(isinstance(v, FoldedTeacher) for v in folded.views)
    assert all(isinstance(v, HookedTeacher) for v in hooked.views)
    loss_f, parts_f = folded.inversion_loss()
    loss_h, parts_h = hooked.inversion_loss()
    assert torch.allclose(loss_f, loss_h, rtol=1e-5)
    assert all(torch.allclose(parts_f[k], parts_h[k], rtol=1e-5, atol=1e-7) for k in parts_f)
    grad_f = torch.autograd.grad(loss_f, folded.memory)
    grad_h = torch.autograd.grad(loss_h, hooked.memory)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grad_f, grad_h))


def test_step_gradient_is_the_gradient_of_the_summed_loss():
    """The step differentiates teacher by teacher; that must equal one backward of the sum."""
    teachers = [make_teacher(0, [0, 1]), make_teacher(1, [2, 3])]
    inverter = make_inverter(teachers, jitter=0)
    expected = torch.autograd.grad(inverter.inversion_loss()[0], inverter.memory)
    inverter.step(None, {})  # leaves the gradient it stepped with in .grad
    assert all(torch.allclose(m.grad, g, rtol=1e-5, atol=1e-8) for m, g in zip(inverter.memory, expected))


def test_batched_teachers_match_one_at_a_time():
    teachers = [make_teacher(0, [0, 1]), make_teacher(1, [2, 3]), make_teacher(2, [4, 5]),
                make_teacher(3, [6, 7, 8]), make_teacher(4, [9, 10], bn=False)]
    alone = make_inverter(teachers, batch_teachers="off")
    together = make_inverter(teachers, batch_teachers="on")
    # same architecture, same class count, folded: one vmapped group; the others run alone
    assert [g.members for g in together.groups] == [[0, 1, 2], [3], [4]]
    assert all(len(g.members) == 1 for g in make_inverter(teachers).groups)  # auto: off on CPU
    for a, b in zip(alone.memory, together.memory):
        assert torch.equal(a, b)
    loss_alone, parts_alone = alone.inversion_loss()
    loss_together, parts_together = together.inversion_loss()
    assert torch.allclose(loss_alone, loss_together, rtol=1e-5)
    for name in parts_alone:
        assert torch.allclose(parts_alone[name], parts_together[name], rtol=1e-5), name
    grads_alone = torch.autograd.grad(loss_alone, alone.memory)
    grads_together = torch.autograd.grad(loss_together, together.memory)
    for a, b in zip(grads_alone, grads_together):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for _ in range(3):
        logged_alone, logged_together = alone.step(None, {}), together.step(None, {})
    assert float(logged_together["total"]) == pytest.approx(float(logged_alone["total"]), rel=1e-4)
    for a, b in zip(alone.memory, together.memory):
        assert torch.allclose(a, b, atol=1e-4)
