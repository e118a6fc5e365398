"""Reading the reference's YAML configs (copied into tests/data/) into our schema."""

from pathlib import Path
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import numpy as np

from lgdlm_jax import config as config_lib
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
    self.assertEqual(config.data.max_samples, 2000000)  # token_dir is empty: no scan limit
    self.assertEqual(config.data.num_workers, 8)
    self.assertEqual(
      set(ignored),
      {
        'data.data_files.train',
        'data.data_files.validation',
        'data.max_val_samples',
        'model.type',
        'model.diffusion_process',
        'model.latent_diffusion_process',
        'model.n_heads',
        'model.qk_rmsnorm',
        'model.use_multimodal',
        'model.latent_beta_min',
        'model.latent_beta_max',
        'model.use_stub_if_no_mmdit',
        'logging.run_name',
        'logging.log_dir',
        'tokenizer.local_files_only',
      },
    )

  def test_loaded_configs_build_an_optimizer(self):
    from lgdlm_jax.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top

    for path in (SMOKE_YAML, CLUSTER_YAML):
      config = reference_yaml.load_reference_yaml(path)
      optimizer_lib.make_optimizer(config)
      schedule = optimizer_lib.learning_rate_schedule(config)
      np.testing.assert_allclose(schedule(0), config.optimizer.lr / max(1, config.training.warmup_steps), rtol=1e-6)

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
    path = self._write('config.yaml', 'optimizer:\n  type: Adam\n  name: adamw\ndata:\n  max_samples: null\n')
    config, _ = reference_yaml.read_reference_yaml(path)
    self.assertEqual(config.optimizer.name, 'Adam')  # lower-cased by config.finalize
    self.assertEqual(config.data.max_samples, 0)

  def test_keys_only_lgdlm_jax_has_are_applied_from_the_yaml(self):
    path = self._write('config.yaml', 'model:\n  remat_policy: full\ntraining:\n  eval_every: 50\n  n_gpus: 8\n')
    config, ignored = reference_yaml.read_reference_yaml(path)
    self.assertEqual(config.model.remat_policy, 'full')
    self.assertEqual(config.training.eval_every, 50)  # evaluation because the YAML asks for it
    self.assertEqual(ignored, ('training.n_gpus',))

  def test_batch_sizes_are_per_process_and_evaluation_is_off(self):
    config, _ = reference_yaml.read_reference_yaml(CLUSTER_YAML)
    self.assertEqual(config.training.batch_size_per, 'process')
    self.assertEqual(
      (config.training.eval_every, config.training.print_examples, config.training.save_every), (0, 0, 1000)
    )
    frozen = config_lib.for_processes(config_lib.finalize(config), process_count=8)
    self.assertEqual((frozen.training.train_batch_size, frozen.training.eval_batch_size), (32, 32))
    self.assertEqual(frozen.training.batch_size_per, 'global')
    self.assertIs(config_lib.for_processes(frozen, 8), frozen)  # already global: unchanged

  def test_scan_limit_caps_token_dir_file_pairs_as_the_reference_loader_does(self):
    for yaml_text, expected in (
      ('data:\n  token_dir: t\n  latent_dir: l\n', 10000),  # the reference's default scan limit
      ('data:\n  token_dir: t\n  latent_dir: l\n  initial_scan_limit: 50\n  max_samples: 80\n', 50),
      ('data:\n  token_dir: t\n  latent_dir: l\n  initial_scan_limit: 500\n  max_samples: 80\n', 80),
      ('data:\n  data_dir: d\n  initial_scan_limit: 50\n', 0),  # its data_dir loader has no scan limit
    ):
      config, _ = reference_yaml.read_reference_yaml(self._write('config.yaml', yaml_text))
      self.assertEqual(config.data.max_samples, expected, yaml_text)

  def test_tokenizer_path_sets_the_vocabulary_and_special_ids(self):
    import tokenizers  # pylint: disable=g-import-not-at-top

    directory = Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, directory)
    vocab = {name: i for i, name in enumerate(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '<mask>'] + list('abcdefg'))}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.add_special_tokens(['[EXTRA]'])
    tokenizer.save(str(directory / 'tokenizer.json'))
    (directory / 'special_tokens_map.json').write_text('{"mask_token": "<mask>", "pad_token": {"content": "[PAD]"}}')
    path = self._write('config.yaml', f'tokenizer:\n  path: {directory}\n  vocab_size: 8192\n  mask_token_id: 103\n')
    config, ignored = reference_yaml.read_reference_yaml(path)
    self.assertEqual((config.model.vocab_size, config.tokenizer.vocab_size), (13, 13))  # len(tokenizer)
    self.assertEqual((config.tokenizer.mask_token_id, config.tokenizer.pad_token_id), (4, 0))
    self.assertEqual(config.tokenizer.json_file, str(directory / 'tokenizer.json'))
    self.assertEqual(ignored, ())
    missing = self._write('config.yaml', 'tokenizer:\n  path: /no/such/tokenizer\n')
    with self.assertRaisesRegex(ValueError, 'tokenizer.path=.*/no/such/tokenizer'):
      reference_yaml.read_reference_yaml(missing)

  @parameterized.named_parameters(
    ('int_key', 'training:\n  num_train_steps: many\n', 'training.num_train_steps'),
    ('float_key', 'optimizer:\n  lr: fast\n', 'optimizer.lr'),
    ('bool_key', 'loss:\n  cycle_stop_grad_latent: 3\n', 'loss.cycle_stop_grad_latent'),
    ('dtype', 'training:\n  dtype: fp16\n', 'training.dtype'),
    ('loss_type', 'loss:\n  loss_type: mdlm\n', 'loss.loss_type'),
    ('json_loader', 'data:\n  use_preprocessed: false\n', 'data.use_preprocessed'),
    ('raw_text', 'data:\n  load_tokens: false\n', 'data.load_tokens'),
  )
  def test_bad_or_unsupported_value_names_the_key_and_the_file(self, yaml_text, key):
    path = self._write('bad.yaml', yaml_text)
    with self.assertRaisesRegex(ValueError, f'bad.yaml.*{key.replace(".", r"[.]")}'):
      reference_yaml.read_reference_yaml(path)

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
