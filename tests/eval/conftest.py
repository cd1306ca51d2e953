"""The evaluation stage's tests: skipped as a folder when its extra is missing."""

from helpers import require_stage

require_stage("eval")
