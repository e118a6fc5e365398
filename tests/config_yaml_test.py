"""Reading the reference's YAML configs (copied into tests/data/) into our schema."""

from pathlib import Path
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import numpy as np

from lgdlm_jax.config import reference_yaml

DATA_DIR = Path(__file__).resolve().parent / 'data'
SMOKE_YAML = DATA_DIR / 'mmdit_cycle_vae.yaml'
CLUSTER_YAML = DATA_DIR / 'mmdit_cycle_vae_cluster.yaml'


class ReferenceYamlTest(chex.TestCase, parameterized.TestCase):

  def _write(self, name: str, content: str) -> Path:
    # absl's create_tempfile needs parsed flags, which pytest does not provide.
    directory = Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, directory)
    path = directory / name
    path.write_text(content, encoding='utf-8')
    return path

  def test_smoke_yaml_values(self):
    config, ignored = reference_yaml.read_reference_yaml(SMOKE_YAML)
    self.assertEqual(config.model.hidden_size, 256)
    self.assertEqual(config.model.n_blocks, 2)
    self.assertEqual(config.model.dtype, 'float32')
    self.assertEqual(config.model.vocab_size, 8192)
    self.assertEqual(config.data.max_samples, 1024)
    self.assertEqual(config.loss.latent_t_mode, 'random')
    self.assertEqual(config.loss.cycle_latent_weight, 0.0)
    # '1e-4' is a string to PyYAML; it must still arrive as a float.
    self.assertIsInstance(config.optimizer.lr, float)
    self.assertEqual(config.optimizer.lr, 1e-4)
    self.assertEqual(config.optimizer.eps, 1e-8)
    self.assertEqual(config.optimizer.grad_clip_norm, 1.0)
    self.assertEqual(config.training.log_every, 1)
    # Absent from this file: the reference's defaults apply.
    self.assertEqual(config.training.lr_schedule, 'constant')
    self.assertEqual(config.training.warmup_steps, 0)
    self.assertIn('model.n_heads', ignored)
    self.assertIn('model.use_stub_if_no_mmdit', ignored)

  def test_cluster_yaml_values(self):
    config, ignored = reference_yaml.read_reference_yaml(CLUSTER_YAML)
    self.assertEqual(config.model.hidden_size, 1024)
    self.assertEqual(config.model.n_blocks, 24)
    self.assertEqual(config.model.cond_dim, 1024)
    self.assertEqual(config.model.max_seq_len, 4096)
    self.assertEqual(config.model.dropout, 0.1)
    self.assertEqual(config.model.dtype, 'bfloat16')
    self.assertEqual(config.training.train_batch_size, 4)
    self.assertEqual(config.training.num_train_steps, 100000)
    self.assertEqual(config.training.lr_schedule, 'cosine')
    self.assertEqual(config.training.warmup_steps, 2000)
    self.assertEqual(config.training.log_every, 100)
    self.assertEqual(config.training.save_every, 1000)
    self.assertEqual(config.optimizer.lr, 5e-5)
    self.assertEqual((config.optimizer.beta1, config.optimizer.beta2), (0.9, 0.95))
    self.assertEqual(config.optimizer.weight_decay, 0.01)
    self.assertEqual(config.optimizer.grad_clip_norm, 0.5)
    self.assertEqual(config.loss.latent_t_mode, 'full')
    self.assertEqual(config.loss.cycle_text_weight, 1.0)
    self.assertEqual(config.loss.cycle_latent_weight, 1.0)
    self.assertEqual(config.data.max_samples, 2000000)
    self.assertEqual(
        set(ignored),
        {'data.data_files.train', 'data.data_files.validation', 'data.load_tokens',
         'data.use_preprocessed', 'data.max_val_samples', 'data.num_workers',
         'data.initial_scan_limit', 'model.type', 'model.diffusion_process',
         'model.latent_diffusion_process', 'model.n_heads', 'model.qk_rmsnorm',
         'model.use_multimodal', 'model.latent_beta_min', 'model.latent_beta_max',
         'model.use_stub_if_no_mmdit', 'logging.run_name', 'logging.log_dir', 'tokenizer.path',
         'tokenizer.local_files_only'})

  def test_loaded_configs_build_an_optimizer(self):
    from lgdlm_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
    for path in (SMOKE_YAML, CLUSTER_YAML):
      config = reference_yaml.load_reference_yaml(path)
      optimizer_lib.make_optimizer(config)
      schedule = optimizer_lib.learning_rate_schedule(config)
      np.testing.assert_allclose(
          schedule(0), config.optimizer.lr / max(1, config.training.warmup_steps), rtol=1e-6)

  def test_ignored_keys_are_logged(self):
    with self.assertLogs(level='WARNING') as logs:
      reference_yaml.load_reference_yaml(SMOKE_YAML)
    self.assertIn('model.qk_rmsnorm', '\n'.join(logs.output))

  def test_reference_defaults_fill_absent_keys(self):
    path = self._write('config.yaml', 'optimizer:\n  lr: 3.0e-4\ntraining:\n  dtype: bf16\n')
    config, ignored = reference_yaml.read_reference_yaml(path)
    self.assertEqual(config.optimizer.lr, 3e-4)
    # torch's AdamW defaults when the reference YAML leaves them out (smoke.py says 0.95, 0.01).
    self.assertEqual(config.optimizer.beta2, 0.999)
    self.assertEqual(config.optimizer.weight_decay, 0.0)
    self.assertEqual(config.model.dtype, 'bfloat16')
    self.assertEqual(ignored, ())

  def test_optimizer_type_beats_name_and_null_max_samples_means_all(self):
    path = self._write(
        'config.yaml', 'optimizer:\n  type: Adam\n  name: adamw\ndata:\n  max_samples: null\n')
    config, _ = reference_yaml.read_reference_yaml(path)
    self.assertEqual(config.optimizer.name, 'Adam')
    self.assertEqual(config.data.max_samples, 0)

  def test_overrides(self):
    config, ignored = reference_yaml.read_reference_yaml(SMOKE_YAML, overrides=(
        'training.dtype=bf16',
        'optimizer.lr=5e-5',
        'training.lr_schedule=cosine',
        'training.warmup_steps=7',
        'loss.cycle_stop_grad_latent=false',
        'tokenizer.vocab_size=1000',
        'model.n_heads=16',
        'model.remat_policy=full',
        'data.token_dir=/tmp/tok=x',
    ))
    self.assertEqual(config.model.dtype, 'bfloat16')
    self.assertEqual(config.optimizer.lr, 5e-5)
    self.assertEqual(config.training.lr_schedule, 'cosine')
    self.assertEqual(config.training.warmup_steps, 7)
    self.assertFalse(config.loss.cycle_stop_grad_latent)
    self.assertEqual((config.model.vocab_size, config.tokenizer.vocab_size), (1000, 1000))
    self.assertEqual(config.model.remat_policy, 'full')
    self.assertEqual(config.data.token_dir, '/tmp/tok=x')
    self.assertIn('model.n_heads', ignored)

  @parameterized.named_parameters(
      ('typo', 'model.hiden_size=3', 'model.hiden_size'),
      ('unknown_section', 'trainer.lr=3', 'trainer.lr'),
      ('no_equals', 'model.hidden_size', 'model.hidden_size'),
  )
  def test_bad_override_names_the_key(self, override, key):
    with self.assertRaisesRegex(ValueError, key.replace('.', r'\.')):
      reference_yaml.read_reference_yaml(SMOKE_YAML, overrides=(override,))

  @parameterized.named_parameters(
      ('int_key', 'training.num_train_steps=many', 'training.num_train_steps'),
      ('float_key', 'optimizer.lr=fast', 'optimizer.lr'),
      ('bool_key', 'loss.cycle_stop_grad_latent=3', 'loss.cycle_stop_grad_latent'),
      ('dtype', 'training.dtype=fp16', 'training.dtype'),
      ('loss_type', 'loss.loss_type=mdlm', 'loss.loss_type'),
  )
  def test_bad_value_names_the_key(self, override, key):
    with self.assertRaisesRegex(ValueError, key.replace('.', r'\.')):
      reference_yaml.read_reference_yaml(SMOKE_YAML, overrides=(override,))

  def test_missing_file_names_the_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'no_such_config.yaml'):
      reference_yaml.load_reference_yaml(DATA_DIR / 'no_such_config.yaml')

  def test_invalid_yaml_names_the_file(self):
    path = self._write('broken.yaml', 'model: [unclosed\n')
    with self.assertRaisesRegex(ValueError, 'broken.yaml'):
      reference_yaml.load_reference_yaml(path)

  def test_non_mapping_yaml_names_the_file(self):
    path = self._write('list.yaml', '- 1\n- 2\n')
    with self.assertRaisesRegex(ValueError, 'list.yaml'):
      reference_yaml.load_reference_yaml(path)


if __name__ == '__main__':
  absltest.main()
