"""DeepBind-style binding models over DNA: training, calibration, motifs, variants, scans."""
