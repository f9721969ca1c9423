// vqserve page: what the page lets a user save, built in the browser from what the API returned.
//
// Loaded before app.js (a classic script: these functions are globals). The .npy writer follows NumPy's format
// version 1.0: magic, version, a little-endian uint16 header length, a Python-literal dict padded with spaces to a
// multiple of 64 bytes and ended by a newline, then the data in C order.
"use strict";

// a 2-D grid of integer codes -> the bytes of an .npy file of little-endian int32 (what /encode's binary reply uses)
function npyInt32(grid) {
  const rows = grid.length;
  const cols = rows ? grid[0].length : 0;
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]; // "\x93NUMPY", version 1.0
  const dict = `{'descr': '<i4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  const fixed = magic.length + 2; // + the header length field
  const headerLength = Math.ceil((fixed + dict.length + 1) / 64) * 64 - fixed;
  const header = dict.padEnd(headerLength - 1, " ") + "\n";
  const buffer = new ArrayBuffer(fixed + headerLength + 4 * rows * cols);
  const bytes = new Uint8Array(buffer);
  bytes.set(magic, 0);
  const view = new DataView(buffer);
  view.setUint16(magic.length, headerLength, true);
  for (let i = 0; i < header.length; i += 1) bytes[fixed + i] = header.charCodeAt(i);
  let offset = fixed + headerLength;
  for (const row of grid) {
    if (row.length !== cols) throw new Error("the code grid is not rectangular");
    for (const code of row) {
      view.setInt32(offset, code, true);
      offset += 4;
    }
  }
  return new Blob([buffer], { type: "application/octet-stream" });
}

// the grid as a POST /decode JSON body, so that a saved file decodes again as it is
function decodeRequestJSON(grid, imageSize) {
  const body = JSON.stringify({ indices: grid, image_size: imageSize });
  return new Blob([body], { type: "application/json" });
}

// a file name part from what the user picked ("My photo.JPG" -> "my-photo")
function fileStem(name) {
  const stem = name.replace(/\.[a-z0-9]+$/i, "").toLowerCase().replace(/[^a-z0-9_-]+/g, "-");
  return stem.replace(/^-+|-+$/g, "") || "image";
}

// save a blob as a file through a temporary link; the URL is revoked once the browser has taken it
function saveBlob(blob, filename) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}
