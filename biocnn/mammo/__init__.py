"""Mammography: DICOM ingest, 2D/3D classifiers, exam-level scores, Grad-CAM, batch scoring."""
