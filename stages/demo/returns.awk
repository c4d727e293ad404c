# One-bar simple returns from open_time,close rows: ret_1 = close / previous close - 1.
BEGIN { FS = ","; print "open_time,ret_1" }
NR > 2 { printf "%d,%.8f\n", $1, $2 / previous - 1 }
NR > 1 { previous = $2 }
