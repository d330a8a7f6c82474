"""One error hierarchy for the pipeline; each class maps to its own process exit code.

Every message should say what was expected, what was found and what to do, so a
user never needs the traceback to understand a bad input.

May import: nothing (every part of mlpipe imports it).
"""


class PipelineError(Exception):
    """Base class: an expected failure that ends a step with a clear one-line message."""

    exit_code = 10


class ConfigError(PipelineError):
    """The composed configuration is invalid (unknown key, unknown model, bad value)."""

    exit_code = 11


class DataError(PipelineError):
    """The data source cannot be read or fails a basic check (missing file, no target...)."""

    exit_code = 12


class ModelValidationError(PipelineError):
    """A model failed the quality gate (thresholds, inference checks)."""

    exit_code = 13


class StorageError(PipelineError):
    """Artifacts or data could not be stored or fetched."""

    exit_code = 14


class UpstreamError(PipelineError):
    """A step's input (an upstream run) is missing, unfinished or malformed."""

    exit_code = 15


class StepFailedError(PipelineError):
    """The driver's view of a child step that ended FAILED."""

    exit_code = 16


class ServingError(PipelineError):
    """The scoring server did not start or did not answer as expected."""

    exit_code = 17


class ResourceLimitError(PipelineError):
    """A step went past a `monitor` limit (peak RSS, wall time) with monitor.action=fail, or its
    fit worker past preprocess.fit_worker_timeout_s."""

    exit_code = 18


class UntrustedModelError(PipelineError):
    """A model is not the one the qa gate validated (no passing qa run, another source, changed
    files), or holds what the trust boundary refuses (skops types outside skops_trusted_types, a
    pickle under serialization=skops, no sklearn flavor): refused before anything in it is loaded."""

    exit_code = 19


class AccessDeniedError(PipelineError):
    """The tracking server refused the login (401) or the user's permission (403)."""

    exit_code = 20


# The driver's findings about a step process that could not say what happened itself: it tags
# the step's run with one of these (error.type), then fails the pipeline with StepFailedError.
class StepDied(StepFailedError):
    """The step process (or its Kubernetes Job) ended without reporting an error: killed, out
    of memory, evicted."""

    exit_code = 21


class StepTimeout(StepFailedError):
    """The step ran over monitor.max_step_seconds + main.step_grace_s without stopping itself,
    and the driver stopped it."""

    exit_code = 22


class StepNotStarted(StepFailedError):
    """The step could not be submitted (main.backend=kubernetes: Docker, the image, the cluster)."""

    exit_code = 23


class WorkerError(PipelineError):
    """A step's worker process (the preprocessor's fit worker) failed, or ended without an answer."""

    exit_code = 24


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (error tags, terminal lines), or its type when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__
