"""Using a trained run: predict on new videos, a timeline over long ones, and export."""
