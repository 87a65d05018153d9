"""The frozen networks of the evaluation metrics, as NNX modules (inference only, channels-last):
`inception` (FID's InceptionV3), `i3d` (FVD's I3D), `syncnet` (Sync-C / Sync-D), `face3d`
(Deep3DFaceRecon's ResNet-50, for the expression metrics) and their shared `layers`.
Their checkpoint rule tables are in `convert.metric_nets`; preprocessing, statistics and the
`evaluate` command in `eval/`."""
