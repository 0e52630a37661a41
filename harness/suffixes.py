"""The image file suffixes bench reads (harness.imageio decodes them). A module of its own, without
numpy or PIL, so that `bench corpus --help` can name them without loading the decoders."""

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES
