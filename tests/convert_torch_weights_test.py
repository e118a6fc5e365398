"""The converter's command line end to end, run in-process: PyTorch checkpoints -> Flax -> PyTorch."""

import dataclasses
import os
import random
import re
import subprocess
import sys

import hyper_connections
import jax
import ml_dtypes
import numpy as np
import optax
import pytest
import safetensors.numpy
import torch

import convert_torch_weights
from lgdlm_jax import config as config_lib
from lgdlm_jax import convert
from lgdlm_jax.checkpoints import manager as checkpoint
from lgdlm_jax.convert import converted
from lgdlm_jax.convert import files
from lgdlm_jax.convert import layout
from lgdlm_jax.convert import verify
from lgdlm_jax.reference import model as reference_model
from lgdlm_jax.training import step as train
from tests.helpers import models

PARITY_TOL = 1e-5


@dataclasses.dataclass
class UnknownState:
  """A class of no module the converter knows: weights_only unpickling refuses it."""

  step: int = 0


def _torch_model(cfg, seed=0):
  torch_model, _ = models.build_pair(cfg, seed=seed)
  return torch_model


def _state(torch_model) -> dict[str, torch.Tensor]:
  return {k: v.detach().clone() for k, v in torch_model.state_dict().items()}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
  code = convert_torch_weights.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _assert_nothing_written(output) -> None:
  """Neither the output nor a scratch directory beside it (those start with '.') is left."""
  assert not os.path.lexists(output)
  assert not [n for n in os.listdir(os.path.dirname(output)) if n.startswith('.')]


def _save_like_the_reference(torch_model, path, prefix: str) -> None:
  """A training checkpoint as cycle_vae_impl/utils/checkpoint.py writes one (a trainer wrapping the
  model gives `model.`, a DDP module `module.`), optimizer state and config included."""
  optimizer = torch.optim.AdamW(torch_model.parameters(), lr=0.0)
  for p in torch_model.parameters():
    p.grad = torch.ones_like(p)
  optimizer.step()  # so that the optimizer state holds tensors, as a real one does
  torch.save(
    {
      'model_state_dict': {prefix + k: v for k, v in torch_model.state_dict().items()},
      'optimizer_state_dict': optimizer.state_dict(),
      'step': 7,
      'cfg': {'model': {'dropout': 0.0, 'n_heads': 4}},
      'rng_torch': torch.get_rng_state(),
    },
    path,
  )


@pytest.mark.parametrize('streams,cluster,prefix', [(1, 0, 'module.'), (2, 3, 'model.')])
def test_reference_checkpoint_converts_with_parity_and_back_exactly(tmp_path, capsys, streams, cluster, prefix):
  cfg = models.tiny_config(num_residual_streams=streams, cluster_size=cluster)
  torch_model = _torch_model(cfg, seed=streams)
  _save_like_the_reference(torch_model, tmp_path / 'checkpoint.pt', prefix)

  code, out, err = _run(
    capsys, '--input', tmp_path / 'checkpoint.pt', '--output', tmp_path / 'flax', '--verify', '--tolerance', PARITY_TOL
  )
  assert code == 0, err
  assert "unwrapped 'model_state_dict'" in out and f"stripped prefix '{prefix}'" in out
  assert layout.LAYOUT_NAMES[layout.PLAIN if streams == 1 else layout.MHC] in out
  differences = [float(d) for d in re.findall(r'max \|PyTorch - Flax\| = (\S+)', out)]
  assert len(differences) == (3 if cluster else 2)
  assert max(differences) <= PARITY_TOL
  n_torch = sum(v.numel() for v in torch_model.state_dict().values())
  assert f'({n_torch:,} parameters) into' in out and out.count(f'{n_torch:,} parameters') == 3

  # ... and back: every tensor exactly, and the reference model loads it with strict=True.
  output = tmp_path / ('back.pt' if streams == 1 else 'back.safetensors')
  code, _, err = _run(capsys, '--to-torch', '--input', tmp_path / 'flax', '--output', output)
  assert code == 0, err
  back = files.read_checkpoint(str(output)).state_dict
  original = torch_model.state_dict()
  assert sorted(back) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    assert back[key].shape == tuple(value.shape), key
  fresh = reference_model.ReferenceMultimodalMMDiT(cfg)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_config_inference_gets_every_value_right():
  cfg = models.tiny_config(
    vocab_size=101,
    hidden_size=40,
    latent_dim=12,
    max_seq_len=24,
    n_blocks=3,
    cond_dim=36,
    num_residual_streams=4,
    cluster_size=5,
  )
  state = {k: v.numpy() for k, v in _torch_model(cfg).state_dict().items()}
  inferred = layout.infer_model_config(state, stated={})
  for key in ('vocab_size', 'hidden_size', 'latent_dim', 'max_seq_len', 'n_blocks', 'cond_dim', 'num_residual_streams'):
    assert inferred.config[key] == cfg[key], key
    assert inferred.sources[key] == 'tensors'
  assert inferred.layout == layout.MHC and inferred.config.cluster_size > 0
  # The value of cluster_size is not in the tensors; stated or saved, it is taken.
  assert layout.infer_model_config(state, {'cluster_size': 5}).config.cluster_size == 5
  saved = {'model': {'cluster_size': 9, 'dropout': 0.25, 'latent_parameterization': 'v_param'}}
  from_saved = layout.infer_model_config(state, {'dropout': 0.5}, saved)
  assert (from_saved.config.cluster_size, from_saved.config.dropout) == (9, 0.5)
  assert from_saved.config.latent_parameterization == 'v_param'
  assert from_saved.sources['latent_parameterization'] == 'checkpoint config'
  assert from_saved.config.latent_beta_schedule == config_lib.default_config().model.latent_beta_schedule

  plain = models.tiny_config(num_residual_streams=1, n_blocks=1)
  inferred = layout.infer_model_config({k: v.numpy() for k, v in _torch_model(plain).state_dict().items()}, {})
  assert inferred.layout == layout.PLAIN
  assert (inferred.config.num_residual_streams, inferred.config.n_blocks, inferred.config.cluster_size) == (1, 1, 0)


def test_bfloat16_survives_both_ways(tmp_path, capsys):
  cfg = models.tiny_config()
  state = {k: v.to(torch.bfloat16) for k, v in _state(_torch_model(cfg)).items()}
  safetensors.numpy.save_file(
    {k: v.float().numpy().astype(ml_dtypes.bfloat16) for k, v in state.items()}, str(tmp_path / 'model.safetensors')
  )
  code, out, err = _run(capsys, '--input', tmp_path / 'model.safetensors', '--output', tmp_path / 'flax')
  assert code == 0, err
  assert 'bfloat16' in out
  params = converted.load_params(str(tmp_path / 'flax'), cfg)
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}

  code, _, err = _run(
    capsys, '--to-torch', '--input', tmp_path / 'flax', '--output', tmp_path / 'back.pt', '--torch-layout', 'bare'
  )
  assert code == 0, err
  back = torch.load(tmp_path / 'back.pt', weights_only=True)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].dtype == torch.bfloat16, key
    assert torch.equal(back[key], value), key

  # --dtype casts a float32 checkpoint.
  torch.save(_state(_torch_model(cfg)), tmp_path / 'model.pth')
  code, _, err = _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'cast', '--dtype', 'bfloat16')
  assert code == 0, err
  cast = converted.load_params(str(tmp_path / 'cast'), cfg)
  assert {x.dtype for x in jax.tree_util.tree_leaves(cast)} == {np.dtype(ml_dtypes.bfloat16)}


def _hyper_connections_state(cfg) -> dict[str, torch.Tensor]:
  """An mmdit 0.2.x state dict: 0.2.2 differs from 0.3.0 only in using HyperConnections as residual."""
  state = {k: v for k, v in _state(_torch_model(cfg)).items() if '_residual_fns.' not in k}
  random.seed(0)
  old = hyper_connections.HyperConnections(cfg.num_residual_streams, dim=cfg.hidden_size).state_dict()
  for block in range(cfg.n_blocks):
    for kind in ('attn', 'ff'):
      for modality in (0, 1):
        state.update({f'mmdit.blocks.{block}.{kind}_residual_fns.{modality}.{k}': v for k, v in old.items()})
  return state


def _break_missing(state, cfg):
  del state['mmdit.blocks.1.joint_attn.to_qkv.0.weight']
  return [r'missing mmdit\.blocks\.1\.joint_attn\.to_qkv\.0\.weight \(1536, 64\)', '--allow-missing']


def _break_extra(state, cfg):
  state['extra_head.weight'] = torch.zeros(3, 5)
  return [r'unexpected extra_head\.weight \(3, 5\)', '--allow-unexpected']


def _break_shape(state, cfg):
  state['text_head.bias'] = torch.zeros(cfg.vocab_size + 1)
  return [r'mismatched text_head\.bias: checkpoint \(98,\), model \(97,\)', '--allow-mismatched']


def _break_old_layout(state, cfg):
  state.clear()
  state.update(_hyper_connections_state(cfg))
  return [r'HyperConnections layout of mmdit 0\.2\.x \(R=2\)', 'does not implement', 'Sinkhorn']


@pytest.mark.parametrize('breaker', [_break_missing, _break_extra, _break_shape, _break_old_layout])
def test_checkpoints_that_do_not_fit_are_refused_naming_the_problem(tmp_path, capsys, breaker):
  cfg = models.tiny_config()
  state = _state(_torch_model(cfg))
  expected = breaker(state, cfg)
  torch.save(state, tmp_path / 'model.pth')
  code, _, err = _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out')
  assert code == 1
  for pattern in expected:
    assert re.search(pattern, err), (pattern, err)
  _assert_nothing_written(tmp_path / 'out')


@pytest.mark.parametrize(
  'flags,pattern',
  [
    (
      ['--hidden-size', '32'],
      r'hidden_size: stated 32, but the tensors say 64 \(text_encoder\.token_embed\.weight '
      r'has shape \(97, 64\)\)',
    ),
    (['--num-residual-streams', '4'], r'num_residual_streams: stated 4, but the tensors say 2'),
    (['--cluster-size', '8'], r'cluster_size: stated 8, but text_head_clusters\.weight is absent'),
  ],
)
def test_contradicting_flag_names_both_values(tmp_path, capsys, flags, pattern):
  torch.save(_state(_torch_model(models.tiny_config())), tmp_path / 'model.pth')
  code, _, err = _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out', *flags)
  assert code == 1 and re.search(pattern, err), err
  _assert_nothing_written(tmp_path / 'out')


@pytest.mark.parametrize('name', ['checkpoint.pt', 'model.safetensors'])
def test_truncated_file_is_refused(tmp_path, capsys, name):
  state = _state(_torch_model(models.tiny_config()))
  path = tmp_path / name
  if name.endswith('.safetensors'):
    safetensors.numpy.save_file({k: v.numpy() for k, v in state.items()}, str(path))
  else:
    torch.save(state, path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  code, _, err = _run(capsys, '--input', path, '--output', tmp_path / 'out')
  assert code == 1 and 'truncated?' in err, err
  _assert_nothing_written(tmp_path / 'out')


def test_unknown_pickled_class_needs_unsafe_pickle(tmp_path, capsys):
  cfg = models.tiny_config()
  torch.save({'model_state_dict': _state(_torch_model(cfg)), 'state': UnknownState(3)}, tmp_path / 'checkpoint.pt')
  code, _, err = _run(capsys, '--input', tmp_path / 'checkpoint.pt', '--output', tmp_path / 'out')
  assert code == 1
  assert '--unsafe-pickle' in err and 'convert_torch_weights_test.UnknownState' in err and len(err.splitlines()) == 1
  _assert_nothing_written(tmp_path / 'out')
  code, _, err = _run(capsys, '--input', tmp_path / 'checkpoint.pt', '--output', tmp_path / 'out', '--unsafe-pickle')
  assert code == 0, err


def test_allow_flags_drop_and_initialise_and_report(tmp_path, capsys):
  cfg = models.tiny_config(num_residual_streams=1, n_blocks=1)  # initialising parameters runs the model
  state = _state(_torch_model(cfg))
  del state['text_head.bias']
  state['extra.weight'] = torch.ones(2)
  torch.save(state, tmp_path / 'model.pth')
  code, out, err = _run(
    capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out', '--allow-missing', '--allow-unexpected'
  )
  assert code == 0, err
  assert 'missing text_head.bias (97,)' in out and 'unexpected extra.weight (2,)' in out
  params = converted.load_params(str(tmp_path / 'out'), cfg)
  np.testing.assert_array_equal(params['text_head']['kernel'], state['text_head.weight'].numpy().T)


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys):
  torch.save(_state(_torch_model(models.tiny_config())), tmp_path / 'model.pth')
  (tmp_path / 'out').mkdir()
  code, _, err = _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out')
  assert code == 1 and '--overwrite' in err
  assert os.listdir(tmp_path / 'out') == []


def test_load_params_names_what_does_not_fit(tmp_path, capsys):
  cfg = models.tiny_config()
  torch.save(_state(_torch_model(cfg)), tmp_path / 'model.pth')
  assert _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out')[0] == 0
  with pytest.raises(
    convert.ConversionError,
    match=r'shape mismatch: got latent_encoder/position_embed \(1, 1, 64\).*'
    r'hidden_size \(64 there, 32 here\)',
  ):
    converted.load_params(str(tmp_path / 'out'), models.tiny_config(hidden_size=32))


def test_to_torch_from_a_training_workdir(tmp_path, capsys):
  config = config_lib.default_config()
  config.model.update(dict(models.tiny_config(cluster_size=2).items()))
  config.tokenizer.mask_token_id = 3
  _, params = models.build_pair(config.model, seed=4)
  optimizer = optax.adamw(1e-3)
  state = train.TrainState(
    step=np.int32(3),
    params=params,
    opt_state=optimizer.init(params),
    nonfinite_steps=np.int32(0),
    consecutive_nonfinite=np.int32(0),
  )
  workdir = tmp_path / 'run'
  manager = checkpoint.make_manager(str(workdir), config)
  for step in (3, 6):
    checkpoint.save(manager, step, state)
  manager.wait_until_finished()
  (workdir / 'config.json').write_text(config.to_json())

  code, out, err = _run(
    capsys, '--to-torch', '--input', workdir, '--output', tmp_path / 'model.pt', '--step', 3, '--torch-layout', 'bare'
  )
  assert code == 0, err
  assert 'step 3' in out
  back = torch.load(tmp_path / 'model.pt', weights_only=True)
  reference_model.ReferenceMultimodalMMDiT(config.model).load_state_dict(back, strict=True)
  expected = convert.flax_to_torch(params, config.model)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key].numpy(), value, err_msg=key)


def test_verify_above_tolerance_fails_and_writes_nothing(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(verify, 'max_abs_differences', lambda *_: {'text_logits': 1e-6, 'latent_pred': 3e-4})
  torch.save(_state(_torch_model(models.tiny_config())), tmp_path / 'model.pth')
  code, out, err = _run(capsys, '--input', tmp_path / 'model.pth', '--output', tmp_path / 'out', '--verify')
  assert code == 1
  assert 'tolerance 0.0001' in out and 'latent_pred differs by 0.0003 > tolerance 0.0001' in err
  _assert_nothing_written(tmp_path / 'out')


def test_module_and_script_are_the_same_command(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  commands = {
    'python -m lgdlm_jax.convert': [sys.executable, '-m', 'lgdlm_jax.convert'],
    'convert_torch_weights.py': [sys.executable, os.path.join(repo, 'convert_torch_weights.py')],
  }
  results = {}
  for name, command in commands.items():
    run = subprocess.run(
      command + ['--input', str(tmp_path / 'missing'), '--output', str(tmp_path / 'out'), '--to-torch'],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith(f'{name}: error: ') and len(run.stderr.strip().splitlines()) == 1, run.stderr
    results[name] = run.stderr.split(': error: ', 1)[1]
  assert len(set(results.values())) == 1, results
