"""The TPU compiler's step estimate from a compiled HLO text: every loop counted by its trip count
(the compile itself, with libtpu, is tested in aot_test)."""

from lgdlm_jax.training import step_estimate

# A loop of 5 iterations whose body runs a fusion (100 cycles), a conditional (its branches 7 and
# 30 cycles) and a Pallas kernel the cost model gives no cycles; the condition costs 1 cycle.
HLO = """HloModule toy, entry_computation_layout={()->s32[]}

%fused (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %n = f32[8]{0} negate(%p)
}

%cheap (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  ROOT %f = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"7"}
}

%dear (b: f32[8]) -> f32[8] {
  %b = f32[8]{0} parameter(0)
  ROOT %g = f32[8]{0} fusion(%b), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"30"}
}

%body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[8]{0} get-tuple-element(%t), index=1
  %y = f32[8]{0} fusion(%x), kind=kOutput, calls=%fused, backend_config={"estimated_cycles":"100"}
  %k = f32[8]{0} custom-call(%y), custom_call_target="tpu_custom_call", backend_config={"kernel":"x"}
  %pred = pred[] constant(true)
  %z = f32[8]{0} conditional(%pred, %k, %k), true_computation=%cheap, false_computation=%dear
  ROOT %r = (s32[], f32[8]{0}) tuple(%i, %z)
}

%cond (c: (s32[], f32[8])) -> pred[] {
  %c = (s32[], f32[8]{0}) parameter(0)
  %j = s32[]{:T(128)} get-tuple-element(%c), index=0
  %five = s32[]{:T(128)} constant(5)
  ROOT %lt = pred[]{:T(512)} compare(%j, %five), direction=LT, backend_config={"estimated_cycles":"1"}
}

ENTRY %main () -> s32[] {
  %zero = s32[] constant(0)
  %init = f32[8]{0} constant({0,0,0,0,0,0,0,0})
  %start = (s32[], f32[8]{0}) tuple(%zero, %init)
  %w = (s32[], f32[8]{0}) while(%start), condition=%cond, body=%body
  %copy = f32[8]{0} copy(%init), backend_config={"estimated_cycles":"50"}
  ROOT %out = s32[] get-tuple-element(%w), index=0
}
"""


def test_loops_count_by_their_trip_count_and_kernels_without_cycles_are_named():
  counted = step_estimate.total_cycles(HLO)
  # Outside 50; each of 5 iterations 100 + the dearer branch 30; the condition runs 6 times.
  assert counted.total == 50 + 5 * (100 + 30) + 6 * 1
  assert counted.loops == {'w': 5} and counted.uncounted_loops == []
  assert counted.uncosted_kernels == {'k': 5}
  # As the cost analysis counts: each body once.
  assert step_estimate.total_cycles(HLO, count_trips=False).total == 50 + 100 + 30 + 1


def test_a_loop_without_a_stated_trip_count_is_counted_once_and_named():
  hlo = HLO.replace('direction=LT', 'direction=NE')
  counted = step_estimate.total_cycles(hlo)
  assert counted.uncounted_loops == ['w'] and counted.total == 50 + 100 + 30 + 2 * 1
