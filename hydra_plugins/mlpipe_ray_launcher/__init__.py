"""hydra/launcher=ray: sweep jobs as Ray tasks (ray_launcher.py)."""
