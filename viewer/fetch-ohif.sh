#!/bin/bash
# The OHIF v3 viewer, prebuilt, from the pinned npm package: `npm pack` fetches only its tarball (its
# dependencies are bundled into dist/ already), the tarball's sha512 must match the pin, and its dist/
# becomes viewer/dist. The gateway (dicomflow.emulator.viewer) serves it with its own app-config.js.
set -euo pipefail
PACKAGE="@ohif/app@3.13.2"
INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
cd "$(dirname "$0")"
if [ -f dist/.package ] && [ "$(cat dist/.package)" = "$PACKAGE $INTEGRITY" ]; then
  exit 0
fi
rm -rf .pack dist.new && mkdir -p .pack
npm pack "$PACKAGE" --pack-destination .pack --silent > /dev/null
tarball=$(ls .pack/*.tgz)
actual=$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
if [ "$actual" != "$INTEGRITY" ]; then
  echo "$PACKAGE: the tarball's integrity is $actual, not the pinned $INTEGRITY; refusing it" >&2
  exit 1
fi
mkdir dist.new
tar -xzf "$tarball" -C dist.new --strip-components=2 package/dist
echo "$PACKAGE $INTEGRITY" > dist.new/.package
rm -rf dist .pack && mv dist.new dist
