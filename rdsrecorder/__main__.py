from rdsrecorder.cli import main

main()
