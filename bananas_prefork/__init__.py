"""bananas-prefork: a Redis job queue with a prefork supervisor."""

from .core.app import App, Task
from .core.job import JobContext, JobInfo, current_job

__all__ = ["App", "JobContext", "JobInfo", "Task", "current_job"]
__version__ = "0.1.0"
