#!/bin/sh
# kamleak-build "MODULES": build /src with only MODULES, install into /out.
# Each phase prints "@@kamleak phase NAME" so the host can time it.
set -eu
MODULES="$1"
JOBS="${JOBS:-2}"
export CCACHE_DIR=/ccache CCACHE_BASEDIR=/src CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=2G
cd /src
ccache -z >/dev/null 2>&1 || true
echo "@@kamleak phase configure"
# group_include with a group that does not exist: "only include_modules"
# (with no group_include the default set of ~100 modules is built too).
make cfg CC='ccache gcc' PREFIX=/usr LIBDIR=lib/x86_64-linux-gnu \
     group_include=kamleak_none include_modules="$MODULES"
echo "@@kamleak phase compile"
make -j"$JOBS" all
echo "@@kamleak phase install"
make install BASEDIR=/out >/dev/null
# Only what the runtime needs: binary, modules, libs (no docs/man/config).
rm -rf /out/usr/share /out/usr/etc /out/etc
echo "@@kamleak version $(/out/usr/sbin/kamailio -v 2>&1 | head -1)"
echo "@@kamleak ccache $(ccache -s 2>/dev/null | tr '\n' ' ' | tr -s ' ')"
echo "@@kamleak phase done"
