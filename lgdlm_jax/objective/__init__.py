"""The objective: diffusion maths, random draws, pass plans, the cycle_vae terms and loss, cycle schedules."""
