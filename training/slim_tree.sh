#!/usr/bin/env bash
# The device tool copies the working tree, 64 MiB at most, and the repository's tracked
# files are larger (checkpoints of every game, bench results). Before a GPU chunk, set
# aside what it does not need; put it back right after the device call:
#
#     bash training/slim_tree.sh aside [KEEP ...]   # KEEP: tracked paths to keep (default: the Rooms chunk's)
#     bash training/slim_tree.sh back
#
# Files move to $ASIDE (default /tmp/worldsim_aside) with their paths; `back` moves them
# home and refuses to overwrite anything that is there again.
set -eu
aside=${ASIDE:-/tmp/worldsim_aside}
cd "$(git rev-parse --show-toplevel)"
case ${1:-} in
aside)
    shift
    keep=("$@")
    [ ${#keep[@]} -gt 0 ] || keep=(worldsim/checkpoints/rooms.safetensors worldsim/checkpoints/rooms_tokenizer.safetensors
                                   worldsim/checkpoints/campaign/rooms_S.safetensors)
    git ls-files -z -- 'worldsim/checkpoints/*' 'bench/results/*' | while IFS= read -r -d '' f; do
        [ -e "$f" ] || continue  # deleted in the working tree
        for k in "${keep[@]}"; do [ "$f" = "$k" ] && continue 2; done
        mkdir -p "$aside/$(dirname "$f")" && mv "$f" "$aside/$f"
    done
    echo "tracked files now $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes; the rest in $aside"
    ;;
back)
    [ -d "$aside" ] || { echo "nothing set aside in $aside"; exit 0; }
    (cd "$aside" && find . -type f -print0) | while IFS= read -r -d '' f; do
        [ -e "$f" ] && { echo "slim_tree: $f exists again; left in $aside" >&2; continue; }
        mkdir -p "$(dirname "$f")" && mv "$aside/$f" "$f"
    done
    find "$aside" -type d -empty -delete
    git status --short | head
    ;;
*)
    echo "usage: bash training/slim_tree.sh aside [KEEP ...] | back" >&2; exit 2 ;;
esac
