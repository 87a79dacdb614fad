"""Source resolvers: CivitAI, Hugging Face, Google Drive, MEGA and direct URLs."""
