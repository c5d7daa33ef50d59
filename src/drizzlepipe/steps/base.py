"""The stpipe base class of every drizzlepipe step.

:class:`DrizStep` gives stpipe what it needs without CRDS: a default ``output_ext``, an
opener that uses drizzlepipe's readers, a parameter lookup that never leaves the machine
(defaults < parameter file < command line/keywords), and the package's loggers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stpipe import Step

from ..datamodels import DrizDataModel, ModelLibrary, open_path
from ..datamodels.naming import KNOWN_SUFFIXES, exposure_root
from ..datamodels.readers import product_model_type
from ..exceptions import DrizzlepipeInputError
from ..execution import Executor, default_workers, resolve_scheduler

__all__ = [
    "DrizStep",
    "KNOWN_SUFFIXES",
    "exposure_root",
    "open_step_input",
    "filled_parameters",
    "ParameterDoc",
    "STPIPE_COMMON_PARAMETERS",
    "parameter_docs",
    "prepare_output_dir",
    "remove_if_empty",
]

log = logging.getLogger(__name__)


class _ParametersAtDebug(logging.Filter):
    """stpipe logs every parameter of a step run on its own at INFO (some 200 lines for the
    pipeline): for drizzlepipe's steps those lines appear only when drizzlepipe logs DEBUG
    (``strun --verbose``); ``strun --save-parameters`` writes them to a file."""

    def filter(self, record):
        if not str(record.msg).startswith("Step %s parameters are"):
            return True
        ours = record.args and str(record.args[0]) in _STEP_NAMES
        return not ours or logging.getLogger("drizzlepipe").isEnabledFor(logging.DEBUG)


#: Names stpipe gives drizzlepipe's steps in its log (filled as the classes are defined).
_STEP_NAMES = set()
_PARAMETERS_FILTER = _ParametersAtDebug()
logging.getLogger("stpipe.step").addFilter(_PARAMETERS_FILTER)


def open_step_input(init, **kwargs):
    """Open what a step was given: a model or library passes through; a product file opens
    as its model; anything else (file, list, glob, ``@file``, association) becomes a
    :class:`ModelLibrary` of chips.
    """
    if isinstance(init, (DrizDataModel, ModelLibrary)):
        return init
    if isinstance(init, (str, Path)) and product_model_type(init) == "ResampledModel":
        return open_path(init)
    return ModelLibrary(init, **kwargs)


#: Most threads computing chip statistics at once (:meth:`DrizStep.statistics_map`): each holds
#: a sorted copy of a chip's valid pixels (~35 MB for a UVIS chip; all chips of an exposure
#: for sky matching), and the statistics' GIL-bound parts gain little from more threads.
_MAX_STATISTICS_THREADS = 4


class DrizStep(Step):
    """Base class of drizzlepipe's steps (stpipe ``Step`` without CRDS)."""

    spec = """
    output_ext = string(default='.fits')  # File type of saved products (.fits or .asdf)
    scheduler = string(default=None)  # auto, serial, threads, processes or tcp://host:port (None: the pipeline's, else auto: processes with 2+ cores and fork, else serial)
    n_workers = integer(default=None, min=1)  # Workers for threads/processes (None: all cores)
    """  # noqa: E501

    # drizzlepipe has no reference files: nothing to prefetch from CRDS.
    prefetch_references = False

    #: The parameters a preset may set (:mod:`drizzlepipe.presets`) and their built-in values.
    #: Their spec default is None, so that a value the user sets in any way (keyword, command
    #: line, parameter file, attribute), even one equal to the built-in value, is told apart
    #: from one left unset: None means the preset's value inside a pipeline that has one, else
    #: this built-in value (AstroDrizzle's default), which :meth:`run` uses for the run.
    builtin_defaults: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _STEP_NAMES.add(cls.__name__)

    def run(self, *args):
        """stpipe's ``run``, with the parameters still None in :attr:`builtin_defaults` at their
        built-in values for the run (None again afterwards); run on its own (not inside a
        pipeline), with the output directory checked first (created when missing, written to
        once), removed again after a failure if it created it and nothing was written (a failed
        run leaves no empty directory), and one line with the time it took."""
        builtin = [(self, name, value) for name, value in self.builtin_defaults.items()]
        with filled_parameters(builtin):
            if self.parent is not None:
                return super().run(*args)
            created = prepare_output_dir(self.output_dir) if self.output_dir else None
            started = time.perf_counter()
            try:
                result = super().run(*args)
            except BaseException:
                remove_if_empty(created)
                raise
        log.info("%s finished in %.2f s", self.class_alias or type(self).__name__,
                 time.perf_counter() - started)  # fmt: skip
        return result

    @classmethod
    def _datamodels_open(cls, init, **kwargs):
        return open_step_input(init, **kwargs)

    @classmethod
    def _get_crds_parameters(cls, dataset):
        # Never open the input just to ask CRDS: there is no CRDS lookup.
        return {}, "drizzlepipe"

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        # Parameters come from the spec defaults, parameter files and the command line only.
        return cls._empty_config()

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures for drizzlepipe runs."""
        return ("drizzlepipe", "stpipe", "stdatamodels", "py.warnings")

    @staticmethod
    def remove_suffix(name):
        """Strip one known drizzlepipe suffix (``_single``, ``_crf``, ...) from ``name``."""
        for suffix in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
            if name.endswith("_" + suffix):
                return name[: -len(suffix) - 1], "_"
        return name, "_"

    def save_model(self, model, *args, force=False, **kwargs):
        """stpipe calls this after ``process`` when ``save_results`` is set.

        drizzlepipe steps save their products themselves inside ``process`` with
        AstroDrizzle-like names (``<root>_single.fits``, ``<product>_drz.fits``, ...; see
        :meth:`save_product`), so the automatic save of the returned object is skipped;
        ``force=True`` saves.
        """
        if not force:
            return None
        return super().save_model(model, *args, force=force, **kwargs)

    def save_product(self, model, root, suffix):
        """Save ``model`` as ``<output_dir>/<root>_<suffix><output_ext>`` with stpipe's
        ``save_model`` (its naming and log line; the model's own save is atomic).

        Returns
        -------
        str
            The path written.
        """
        return self.save_model(model, suffix=suffix, output_file=self._basepath(root), force=True)

    def product_name(self, library=None):
        """Root name of combined products: the pipeline's, else ``output_file`` (without
        extension and known suffix), else the association's product name, else ``"final"``
        (as AstroDrizzle)."""
        root = getattr(self.parent, "product_root", None) if self.parent is not None else None
        if root:
            return root
        output_file = self.search_attr("output_file")
        if output_file:
            stem = Path(str(output_file)).name
            for ext in (".fits", ".asdf"):
                if stem.lower().endswith(ext):
                    stem = stem[: -len(ext)]
            return self.remove_suffix(stem)[0]
        name = getattr(library, "product_name", None)
        return name or "final"

    def product_path(self, root, suffix):
        """``<output_dir>/<root>_<suffix><output_ext>``: stpipe's ``make_output_path``
        (``output_dir`` searched up the parents, ``output_ext``)."""
        return self.make_output_path(basepath=self._basepath(root), suffix=suffix)

    def _basepath(self, root):
        # with the extension, so that a dot in the root is not taken for one
        ext = self.output_ext if self.output_ext.startswith(".") else f".{self.output_ext}"
        return f"{root}{ext}"

    def pipeline_executor(self):
        """The pipeline's :class:`~drizzlepipe.execution.Executor` when this step runs inside a
        pipeline and uses it (no scheduler of its own), else None."""
        shared = getattr(self.parent, "executor", None) if self.parent is not None else None
        if shared is not None and self.scheduler is None and self.n_workers is None:
            return shared
        return None

    @contextmanager
    def execution(self):
        """The :class:`~drizzlepipe.execution.Executor` for this step's independent tasks: the
        pipeline's when the step runs inside one, else a new one closed afterwards."""
        shared = self.pipeline_executor()
        if shared is not None:
            yield shared
            return
        with Executor(self.scheduler or "auto", self.n_workers) as executor:
            yield executor

    def thread_count(self, limit=None):
        """Threads for this step's work in this process (e.g. statistics whose sorts release
        the GIL): 1 with the ``serial`` scheduler, else the number of workers of the executor
        :meth:`execution` gives (all cores by default), at most ``limit``."""
        shared = self.pipeline_executor()
        if shared is not None:
            count = 1 if shared.scheduler == "serial" else shared.n_workers
        elif resolve_scheduler(self.scheduler or "auto", self.n_workers) == "serial":
            count = 1
        else:
            count = self.n_workers or default_workers()
        return min(count, limit) if limit else count

    @contextmanager
    def statistics_map(self, library, wanted=True):
        """A ``map`` for per-chip statistics computed in this process (the sky and static-mask
        steps): a thread pool's when the library is in memory (the sorts behind the
        statistics release the GIL), with :meth:`thread_count` threads up to 4; the built-in
        ``map`` on disk (chips are read one at a time), with the ``serial`` scheduler, or when
        not ``wanted``."""
        threads = self.thread_count(limit=_MAX_STATISTICS_THREADS)
        if library.on_disk or not wanted or threads <= 1:
            yield map
            return
        with ThreadPoolExecutor(threads) as pool:
            yield pool.map

    def prepare_library(self, init, on_disk=False):
        """Return ``init`` as a :class:`ModelLibrary` (a library passes through unchanged),
        with an in-memory library's chips read already."""
        library = init if isinstance(init, ModelLibrary) else ModelLibrary(init, on_disk=on_disk)
        library.preload()
        return library

    def inherited(self, name, default=None):
        """The step's parameter ``name``; when it is None (not set), its pipeline's parameter of
        that name (``good_bits``, ``crbit``), else ``default``: a value the user gave the step
        always wins over the pipeline's."""
        value = getattr(self, name)
        if value is None and self.parent is not None:
            value = getattr(self.parent, name, None)
        return default if value is None else value

    def record_step_status(self, model, status="COMPLETE"):
        """Write this step's status into ``model.meta.cal_step.<class_alias>``."""
        if self.class_alias:
            setattr(model.meta.cal_step, self.class_alias, status)


@contextmanager
def filled_parameters(assignments):
    """Give the parameters that are None the values of ``assignments`` while the block runs,
    and None again after it: a step keeps telling the values its user set from those left
    unset, run after run.

    Parameters
    ----------
    assignments : iterable of (object, str, object)
        ``(step, parameter name, value)``; a parameter that is not None is left alone.

    Yields
    ------
    list of (object, str, object)
        The assignments made.
    """
    made = []
    try:
        for target, name, value in assignments:
            if getattr(target, name) is None:
                setattr(target, name, value)
                made.append((target, name, value))
        yield made
    finally:
        for target, name, _ in made:
            setattr(target, name, None)


def prepare_output_dir(output_dir):
    """Create ``output_dir`` if needed and check that files can be written in it.

    Returns
    -------
    Path or None
        The outermost directory this call created (to remove after a failure), or None.

    Raises
    ------
    DrizzlepipeInputError
        When the directory cannot be created or written (read-only, no permission, a file).
    """
    path = Path(os.path.expandvars(os.path.expanduser(str(output_dir)))).absolute()
    created = path
    while not created.parent.exists() and created.parent != created:
        created = created.parent
    created = created if not path.exists() else None
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        remove_if_empty(created)
        reason = error.strerror or str(error)
        raise DrizzlepipeInputError(
            path, f"output directory cannot be written ({reason})"
        ) from None
    return created


def remove_if_empty(directory):
    """Remove ``directory`` and its subdirectories when no file is in them (else keep all)."""
    if directory is None or not Path(directory).is_dir():
        return
    if any(item.is_file() for item in Path(directory).rglob("*")):
        return
    shutil.rmtree(directory, ignore_errors=True)


#: Parameters every stpipe step has (saving, hooks, skipping): documented once, on the
#: pipeline's page, not in every step's table.
STPIPE_COMMON_PARAMETERS = (
    "pre_hooks", "post_hooks", "output_file", "output_dir", "output_ext", "output_use_model",
    "output_use_index", "save_results", "skip", "suffix", "search_output_file", "input_dir",
)  # fmt: skip


@dataclass(frozen=True)
class ParameterDoc:
    """One parameter of a step's spec, as the documentation lists it."""

    name: str
    kind: str  # "float", "option: a, b, c", ...
    default: str
    description: str
    limits: str = ""  # "min 1", "min 2, max 2"


def parameter_docs(step_class, *, common=False):
    """The parameters of ``step_class``'s spec (its own and inherited), in spec order.

    Parameters
    ----------
    step_class : type
        A step or pipeline class.
    common : bool
        Include stpipe's :data:`STPIPE_COMMON_PARAMETERS`.

    Returns
    -------
    list of ParameterDoc
        The documentation's argument table, straight from the spec (so it cannot drift).
    """
    from configobj.validate import Validator

    spec = step_class.load_spec_file()
    validator = Validator()
    builtin = getattr(step_class, "builtin_defaults", {})
    rows = []
    for name in spec.scalars:
        # a common parameter a preset may set (static_mask's skip) is the step's own business
        if not common and name in STPIPE_COMMON_PARAMETERS and name not in builtin:
            continue
        kind, args, kwargs, default = validator._parse_with_caching(spec[name])
        if kind == "option":
            kind = "option: " + ", ".join(str(a) for a in args)
        limits = ", ".join(f"{key} {value}" for key, value in kwargs.items())
        comment = (spec.inline_comments.get(name) or "").lstrip("#").strip()
        shown = str(default) if name not in builtin else preset_default_text(builtin[name])
        rows.append(ParameterDoc(name, kind, shown, comment, limits))
    return rows


def preset_default_text(value):
    """How the documentation shows the default of a parameter a preset may set: its built-in
    value, and that the spec's None stands for the preset's value."""
    return f"None: the preset's, else {value!r}"
