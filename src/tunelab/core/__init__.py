"""What every stage shares: the run folder (`rundir`), the internal record (`records`), the errors a
user can act on (`errors`), logging and progress bars (`logging`), and the per-user cache (`home`)."""
