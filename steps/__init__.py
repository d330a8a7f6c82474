"""One module per MLproject entry point, each run as `python -m steps.<step>`.

While the driver's warm helper runs (MLPIPE_WARM_SOCKET, main.warm_steps), a step process hands
its work to a fork of the helper here, before any heavy import (mlpipe/pipeline/warm/)."""

from mlpipe.pipeline.warm.launcher import hand_off

hand_off()
