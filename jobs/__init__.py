"""The job system itself: errors, the broker, enqueueing and job history."""
