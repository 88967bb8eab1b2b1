#!/bin/bash
# Formatting rules of the C sources (nginx style): lines within 80
# columns, no tabs, no trailing spaces, no // comments.

status=0
files=$(ls src/*.[ch] config 2>/dev/null; ls tools/*.c bench/*.c 2>/dev/null;
       ls tools/llm-preflight/*.[ch] 2>/dev/null)

for f in $files; do
    perl -ne '
        chomp;
        my $where = "$ARGV:$.";
        if (length($_) > 80) { print "$where: longer than 80 columns\n" }
        if (/\t/)            { print "$where: tab\n" }
        if (/[ \t]$/)        { print "$where: trailing space\n" }
        if ($ARGV =~ /\.[ch]$/) {
            (my $code = $_) =~ s/"(?:\\.|[^"\\])*"//g;
            $code =~ s{/\*.*?\*/}{}g;
            if ($code =~ m{//}) { print "$where: // comment\n" }
        }
        close ARGV if eof;
    ' "$f" && true
done > /tmp/lint.$$ 2>&1

if [ -s /tmp/lint.$$ ]; then
    cat /tmp/lint.$$
    status=1
fi
rm -f /tmp/lint.$$
exit $status
