"""The upload handler for bodies too large for memory (FILE_UPLOAD_HANDLERS in settings).

Django's own names the temporary file after the upload's extension, so an upload called
``scan.<200 Cyrillic letters>`` fails with "file name too long" (a 500) while the body is
parsed. This one gives the temporary file a fixed ASCII name and keeps the upload's name
on the object, where the services read it.
"""

from __future__ import annotations

from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.core.files.uploadhandler import TemporaryFileUploadHandler as DjangoTemporaryFileUploadHandler


class TemporaryFileUploadHandler(DjangoTemporaryFileUploadHandler):
    def new_file(self, *args, **kwargs):
        FileUploadHandler.new_file(self, *args, **kwargs)
        self.file = TemporaryUploadedFile("upload", self.content_type, 0, self.charset, self.content_type_extra)
        self.file.name = self.file_name
