"""Where import files come from: a watched folder, a bucket, or a folder that acts as a bucket."""
