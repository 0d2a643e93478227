"""The gradient switch's rule (paper §4.2, method.md §2) and the EI curriculum."""

from purer_plugins.curricula import GradientSwitch, GradientSwitchOptions, NoCurriculum


def fired_steps(switch, accuracies, start_step=1):
    fired = []
    for step, acc in enumerate(accuracies, start=start_step):
        if switch.adversarial_scale(step):
            fired.append(step)
        switch.observe(step, acc)
    return fired


def test_never_fires_before_start_and_fires_after_window_without_improvement():
    switch = GradientSwitch(GradientSwitchOptions(start=5, window=3, scale=2.0, fire_at_start=False))
    # steps 1-4: before start; step 5: best=0.5; 6,7,8 stale -> fires at step 9
    accs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.4, 0.4, 0.4, 0.3, 0.3]
    assert fired_steps(switch, accs) == [9]


def test_improvement_resets_the_counter():
    switch = GradientSwitch(GradientSwitchOptions(start=1, window=3, fire_at_start=False))
    accs = [0.5, 0.4, 0.4, 0.6, 0.5, 0.5, 0.5, 0.5]
    # best 0.5 at 1; stale 2,3; new best at 4; stale 5,6,7 -> fires at step 8
    assert fired_steps(switch, accs) == [8]


def test_after_firing_best_and_counter_start_over():
    switch = GradientSwitch(GradientSwitchOptions(start=1, window=2, fire_at_start=False))
    accs = [0.9, 0.1, 0.1, 0.05, 0.05, 0.05]
    # best 0.9; stale at 2,3 -> fire at 4; reset: 0.05 at 4 becomes the best; stale 5,6 -> fire at 7
    assert fired_steps(switch, accs + [0.0]) == [4, 7]


def test_reference_fires_once_unconditionally_at_start():
    switch = GradientSwitch(GradientSwitchOptions(start=3, window=100, scale=10.0, fire_at_start=True))
    assert fired_steps(switch, [0.1 * i for i in range(1, 8)]) == [4]
    assert switch.adversarial_scale(4) == 0.0


def test_scale_is_lambda_when_on():
    switch = GradientSwitch(GradientSwitchOptions(start=0, window=1, scale=7.5, fire_at_start=False))
    switch.observe(1, 0.5)
    switch.observe(2, 0.5)
    assert switch.adversarial_scale(3) == 7.5


def test_state_round_trip():
    switch = GradientSwitch(GradientSwitchOptions(start=0, window=3, fire_at_start=False))
    for step, acc in enumerate([0.3, 0.2, 0.2], start=1):
        switch.observe(step, acc)
    other = GradientSwitch(GradientSwitchOptions(start=0, window=3, fire_at_start=False))
    other.load_state_dict(switch.state_dict())
    switch.observe(4, 0.1)
    other.observe(4, 0.1)
    assert switch.adversarial_scale(5) == other.adversarial_scale(5) > 0


def test_no_curriculum_never_fires():
    assert fired_steps(NoCurriculum(), [0.5] * 50) == []
